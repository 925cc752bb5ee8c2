from pathlib import Path

import pytest

from pbi_ml.config import CandidateConfig, config_from_dict, load_project_config
from pbi_ml.errors import ConfigError


def test_missing_file_gives_demo_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PBI_CONFIG", raising=False)
    monkeypatch.delenv("PBI_DATA_ROOT", raising=False)
    project = load_project_config()
    assert project.source_names == ["demo"]
    assert project.data_root == str((tmp_path / ".pbi-data").resolve())


def test_a_named_config_file_must_exist_and_be_readable(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PBI_CONFIG", str(tmp_path / "pbi.yml"))  # a typo of pbi.yaml
    with pytest.raises(ConfigError, match=r"pbi\.yml: config file not found \(named by \$PBI_CONFIG\)"):
        load_project_config()
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_project_config(tmp_path / "nope.yaml")
    (tmp_path / "dir.yaml").mkdir()  # present but unreadable (root reads any file, not a folder)
    with pytest.raises(ConfigError, match=r"dir\.yaml: cannot be read"):
        load_project_config(tmp_path / "dir.yaml")
    (tmp_path / "bytes.yaml").write_bytes(b"data_root: \xff\xfe\n")
    with pytest.raises(ConfigError, match=r"bytes\.yaml: cannot be read"):
        load_project_config(tmp_path / "bytes.yaml")


def test_yaml_sources_relative_paths_and_env_override(tmp_path, monkeypatch):
    (tmp_path / "pbi.yaml").write_text(
        "data_root: out\nnum_shards: 3\nsources:\n"
        "  - {name: coco, format: coco, images: imgs, annotations: ann.json, role: test}\n"
        "stages:\n  candidates: {min_area_fraction: 0.01}\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PBI_CONFIG", raising=False)
    monkeypatch.delenv("PBI_DATA_ROOT", raising=False)
    project = load_project_config()
    assert project.source_names == ["demo", "coco"]
    coco = project.source("coco")
    assert coco.images == str(tmp_path / "imgs") and coco.role == "test"
    assert project.shard_keys == ["000", "001", "002"]
    assert project.data_root == str(tmp_path / "out")
    assert project.stages["candidates"] == {"min_area_fraction": 0.01}
    monkeypatch.setenv("PBI_DATA_ROOT", str(tmp_path / "elsewhere"))
    assert load_project_config().data_root == str(tmp_path / "elsewhere")


@pytest.mark.parametrize(
    "text, message",
    [
        ("sources:\n  - {name: x, format: yolo, images: i, annotations: a}\n", "format 'yolo'"),
        ("sources:\n  - {name: x, format: coco, images: i, annotations: a, role: val}\n", "role 'val'"),
        ("sources:\n  - {name: x, format: openimages, images: i, annotations: a}\n", "masks"),
        ("sources:\n  - {name: demo, format: coco, images: i, annotations: a}\n", "duplicate"),
        ("sources: [\n", "not valid YAML"),
        ("sources:\n  - {name: x, format: coco, images: i, annotations: a, colour: red}\n", "colour"),
    ],
)
def test_bad_config_fails_with_a_clear_message(tmp_path, text, message):
    path = tmp_path / "pbi.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_project_config(path)


def test_stage_config_rejects_unknown_keys():
    assert config_from_dict(CandidateConfig, {"excluded_classes": ["person"]}).excluded_classes == ("person",)
    with pytest.raises(ConfigError, match="min_area"):
        config_from_dict(CandidateConfig, {"min_area": 0.1})


ROOT = Path(__file__).resolve().parents[2]


def test_docs_configuration_md_is_generated_from_the_dataclasses():
    from pbi_ml.config.reference import COMMAND, configuration_markdown

    assert (ROOT / "docs" / "configuration.md").read_text() == configuration_markdown(), (
        f"docs/configuration.md is not current: run {COMMAND}"
    )


def test_field_docs_are_the_comments_beside_each_field():
    from pbi_ml.cluster import K8sConfig
    from pbi_ml.config import ProjectConfig, RemovalConfig, ScoringConfig, SourceConfig
    from pbi_ml.config.fields import describe_fields

    removal = {f.name: f for f in describe_fields(RemovalConfig)}
    assert removal["model"].doc == "ex runwayml/ (repo moved 2024); Hub id or local dir"  # inside the parentheses
    assert removal["model"].default == "'stable-diffusion-v1-5/stable-diffusion-inpainting'"
    assert removal["prompt"].doc == ""  # no comment: nothing made up
    assert removal["context"].doc.startswith("diffusers backend: inpaint an object-centred window")  # the lines above
    assert (removal["seed"].type, removal["seed"].default, removal["seed"].doc) == (
        "int",
        "0",
        "candidate k uses seed + k",
    )
    scoring = {f.name: f for f in describe_fields(ScoringConfig)}
    assert scoring["clip_max_consensus_std"].doc == (
        "clip thresholds (paper swept: consensus 0.11-0.20, multimodal 0.26-0.295); "
        "candidates disagree above this: consensus_disagreement"
    )
    source = {f.name: f for f in describe_fields(SourceConfig)}
    assert (source["annotations"].type, source["annotations"].default) == ("str | tuple[str, ...]", "required")
    project = {f.name: f for f in describe_fields(ProjectConfig)}
    assert project["k8s"].default == "K8sConfig()" and project["stages"].default == "{}"
    k8s_stages = {f.name: f for f in describe_fields(K8sConfig)}["stages"].default
    assert k8s_stages.startswith("{'source_index': StageResources(") and k8s_stages.endswith("...")


def _stage_config(name: str):
    from pbi_ml.config.reference import STAGE_CONFIGS

    return STAGE_CONFIGS[name]


@pytest.mark.parametrize(
    "stage, values, message",
    [
        ("candidates", {"min_area_fraction": 2}, r"CandidateConfig\.min_area_fraction: 2 is not a number in \[0, 1\]"),
        (
            "class_scores",
            {"backend": "siglip"},
            r"ClassFilterConfig\.backend: 'siglip' is not one of \('off', 'clip'\)",
        ),
        ("removals", {"dtype": "float8"}, r"RemovalConfig\.dtype: 'float8' is not one of \('auto', "),
        ("removal_scores", {"batch_size": 0}, r"ScoringConfig\.batch_size: 0 is not a number > 0"),
        ("pairs", {"feather_sigma": -1}, r"PairConfig\.feather_sigma: -1 is not a number >= 0"),
        ("descriptions", {"max_new_tokens": 0}, r"DescribeConfig\.max_new_tokens: 0 is not a number > 0"),
        ("instructions", {"backend": "gpt"}, r"InstructConfig\.backend: 'gpt' is not one of"),
        ("splits", {"test_fraction": 1.5}, r"SplitConfig\.test_fraction: 1\.5 is not a number in \[0, 1\]"),
        (
            "exports",
            {"formats": ["pipe", "webdataset"]},
            r"ExportConfig\.formats: 'webdataset' is not one of \('pipe', ",
        ),
        ("exports", {"max_shard_bytes": 0}, r"ExportConfig\.max_shard_bytes: 0 is not a number > 0"),
        ("exports", {"seed": -1}, r"ExportConfig\.seed: -1 is not a number >= 0"),
        ("checkpoint", {"crop": "centre"}, r"TrainConfig\.crop='centre' not one of"),
        ("evaluation", {"dtype": "int8"}, r"EvaluationConfig\.dtype: 'int8' is not one of"),
    ],
)
def test_every_stage_config_fails_naming_the_field(stage, values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_stage_config(stage), values)


def test_every_stage_builds_with_its_defaults_and_from_lists():
    from pbi_ml.config.reference import STAGE_CONFIGS

    for cls in STAGE_CONFIGS.values():
        assert config_from_dict(cls, {}) == cls()
    assert config_from_dict(_stage_config("exports"), {"formats": ["pipe"]}).formats == ("pipe",)

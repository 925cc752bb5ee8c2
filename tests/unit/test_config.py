import pytest

from pbi_ml.config import CandidateConfig, ConfigError, config_from_dict, load_project_config


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

"""The exports as users load them: every folder the way diffusers' train_instruct_pix2pix.py loads
`--dataset_name <folder>` (load_dataset(folder), no config, split `train`), the export root with
`--dataset_config_name <config>` (the dataset card's `configs:`), pair_id and mask in every row of
both pix2pix exports, and the reverse (removal) export's prompts. The pairs come from the real graph
on the demo source (the session's `demo_run`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pbi_ml import tables
from pbi_ml.catalog import read_view
from pbi_ml.errors import ConfigError
from pbi_ml.export import FORMATS, ExportConfig, export_pairs
from pbi_ml.instruct.templates import fallback_removal, removal_instruction, removal_prompt
from pbi_ml.storage import Storage

datasets = pytest.importorskip("datasets")

DIFFUSERS_COLUMNS = ("input_image", "edit_prompt", "edited_image")  # the script's default column names
FOLDERS = ("pipe/data", "pipe/masks", "instruct_pix2pix/data", "remove_pix2pix/data")


@pytest.fixture(scope="module")
def demo(demo_run):
    root, partitioned, unpartitioned = demo_run
    assert all(r.success for r in partitioned) and unpartitioned.success
    return root, unpartitioned


@pytest.fixture(scope="module")
def exports_dir(demo) -> Path:
    return Storage(demo[0]).global_dir("exports")


@pytest.fixture(scope="module")
def ok_pairs(demo) -> dict[str, dict]:
    table = read_view(Storage(demo[0]), tables.PAIRS.name, where="status = 'ok'")
    rows = {r["pair_id"]: r for r in table.to_pylist()}
    assert rows, "the demo makes pairs"
    return rows


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("hf-datasets-cache"))


def load_like_diffusers(dataset_name: str, dataset_config_name: str | None, cache_dir: str):
    """What train_instruct_pix2pix.py does with --dataset_name [--dataset_config_name], then its
    column checks with the default (or, without defaults, the first three) column names."""
    dataset = datasets.load_dataset(dataset_name, dataset_config_name, cache_dir=cache_dir)
    column_names = dataset["train"].column_names
    for column in DIFFUSERS_COLUMNS:
        if column not in column_names:
            raise ValueError(f"--{column} value '{column}' needs to be one of: {', '.join(column_names)}")
    assert tuple(column_names[:3]) == DIFFUSERS_COLUMNS, "also right when the script falls back to columns 0-2"
    return dataset


def _array(image) -> np.ndarray:
    return np.asarray(image)


def _file_array(path: str) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


# ---- every folder as --dataset_name, the root with --dataset_config_name


def test_every_export_folder_loads_as_dataset_name_with_a_train_split(exports_dir, hf_cache):
    for folder in FOLDERS:
        dataset = datasets.load_dataset(str(exports_dir / folder), cache_dir=hf_cache)
        assert "train" in dataset, folder
        assert dataset["train"].num_rows > 0, folder
    for folder in ("instruct_pix2pix/data", "remove_pix2pix/data"):
        dataset = load_like_diffusers(str(exports_dir / folder), None, hf_cache)
        train = dataset["train"]
        assert train.column_names == [*DIFFUSERS_COLUMNS, "pair_id", "mask"]
        for column in ("input_image", "edited_image", "mask"):
            assert isinstance(train.features[column], datasets.Image), (folder, column)
        row = train[0]
        assert row["input_image"].mode == "RGB" and row["input_image"].size == row["edited_image"].size
        assert isinstance(row["edit_prompt"], str) and row["edit_prompt"]


def test_the_export_root_loads_with_dataset_config_name(exports_dir, hf_cache):
    card = (exports_dir / "README.md").read_text()
    assert card.startswith("---\nconfigs:\n")
    for config in ("pipe", "pipe_masks", "instruct_pix2pix", "remove_pix2pix"):
        assert f"- config_name: {config}\n" in card
    for config, folder in (("instruct_pix2pix", "instruct_pix2pix/data"), ("remove_pix2pix", "remove_pix2pix/data")):
        by_config = load_like_diffusers(str(exports_dir), config, hf_cache)
        by_folder = datasets.load_dataset(str(exports_dir / folder), split="train", cache_dir=hf_cache)
        assert by_config["train"]["pair_id"] == by_folder["pair_id"], config
        assert by_config["train"]["edit_prompt"] == by_folder["edit_prompt"], config
    # the brief's form, a split at once
    ds = datasets.load_dataset(str(exports_dir), "instruct_pix2pix", split="train", cache_dir=hf_cache)
    assert ds.num_rows > 0
    # instruct_pix2pix is the default config: --dataset_name <root> alone trains on it
    default = load_like_diffusers(str(exports_dir), None, hf_cache)
    assert default["train"]["pair_id"] == ds["pair_id"]
    pipe = datasets.load_dataset(str(exports_dir), "pipe", split="train", cache_dir=hf_cache)
    assert "Instruction_VLM-LLM" in pipe.column_names


# ---- pair_id and mask in every row match the pairs table


@pytest.mark.parametrize(
    ("folder", "input_column", "edited_column"),
    [
        ("instruct_pix2pix/data", "source_image", "target_image"),  # add: object removed -> original
        ("remove_pix2pix/data", "target_image", "source_image"),  # remove: original -> object removed
    ],
)
def test_pair_id_and_mask_decode_and_match_the_pairs_table(
    exports_dir, ok_pairs, hf_cache, folder, input_column, edited_column
):
    dataset = datasets.load_dataset(str(exports_dir / folder), cache_dir=hf_cache)
    seen = set()
    for split, rows in dataset.items():
        for row in rows:
            pair = ok_pairs[row["pair_id"]]
            seen.add(row["pair_id"])
            assert (pair["split"] or "train") == split
            assert row["mask"].size == row["input_image"].size
            assert np.array_equal(_array(row["mask"]), _file_array(pair["mask"]))
            assert np.array_equal(_array(row["input_image"]), _file_array(pair[input_column]))
            assert np.array_equal(_array(row["edited_image"]), _file_array(pair[edited_column]))
    if folder == "remove_pix2pix/data":
        assert seen == set(ok_pairs), "one removal row per ok pair"
        assert sum(len(rows) for rows in dataset.values()) == len(ok_pairs)
    else:
        kinds = ("instruction_class", "instruction_vlm_llm", "instruction_ref")
        with_instruction = {p for p, r in ok_pairs.items() if any(r[k] for k in kinds)}
        assert seen == with_instruction


# ---- the removal prompts


def test_removal_prompts_start_with_remove_the_and_are_deterministic(demo, exports_dir, ok_pairs, hf_cache, tmp_path):
    dataset = datasets.load_dataset(str(exports_dir / "remove_pix2pix/data"), cache_dir=hf_cache)
    prompts = {r["pair_id"]: r["edit_prompt"] for rows in dataset.values() for r in rows}
    assert prompts and all(p.startswith("remove the ") for p in prompts.values())
    seed = ExportConfig().seed
    forms = set()
    for pair_id, prompt in prompts.items():
        pair = ok_pairs[pair_id]
        assert prompt == removal_prompt(pair_id, pair["description"], pair["category"], seed)
        if prompt == fallback_removal(pair["category"]):
            forms.add("class")
        else:
            assert prompt == removal_instruction(pair["description"], pair["category"])
            forms.add("description")
    assert forms == {"class", "description"}, "the seed picks between both forms across the demo's pairs"
    # the same pairs exported again with the same seed: the same prompts; another seed: another pick
    table = read_view(Storage(demo[0]), tables.PAIRS.name, where="status = 'ok'")

    def export_prompts(out: Path, seed: int) -> dict[str, str]:
        export_pairs(table, {}, {}, out, ExportConfig(formats=("remove_pix2pix",), seed=seed))
        again = datasets.load_dataset(str(out / "remove_pix2pix/data"), cache_dir=str(tmp_path / "cache"))
        return {r["pair_id"]: r["edit_prompt"] for rows in again.values() for r in rows}

    assert export_prompts(tmp_path / "same", seed) == prompts
    other = export_prompts(tmp_path / "other", seed + 1)
    assert other.keys() == prompts.keys() and other != prompts


def test_removal_instruction_takes_the_descriptions_noun_phrase_or_the_class():
    cases = [
        ("a small brown dog on the grass", "dog", "remove the small brown dog"),
        ("A large textured brown and white cat.", "cat", "remove the large textured brown and white cat"),
        ("The cat is black and white with green eyes.", "cat", "remove the cat"),
        ("a photo of a red double-decker bus", "bus", "remove the red double-decker bus"),
        ("white surfboard with a blue stripe", "surfboard", "remove the white surfboard"),
        ("a pair of orange-handled scissors", "scissors", "remove the orange-handled scissors"),
        ("a brown teddy bear", "teddy bear", "remove the brown teddy bear"),
        ("a dog bowl", "dog", "remove the dog"),  # "dog" only modifies "bowl": the class
        ("a fluffy animal", "dog", "remove the dog"),  # the description does not name the class
        (None, "Human face", "remove the human face"),
        ("", "bow_(weapon)", "remove the bow"),
        ("a very big old rusty red painted metal bench", "bench", "remove the big old rusty red painted metal bench"),
    ]
    for description, category, expected in cases:
        assert removal_instruction(description, category) == expected, (description, category)
    assert removal_instruction("anything", "") == ""


def test_removal_prompt_depends_only_on_seed_and_pair():
    picks = {removal_prompt(f"p{i}", "a small brown dog", "dog", 0) for i in range(32)}
    assert picks == {"remove the dog", "remove the small brown dog"}
    assert [removal_prompt(f"p{i}", "a small brown dog", "dog", 7) for i in range(32)] == [
        removal_prompt(f"p{i}", "a small brown dog", "dog", 7) for i in range(32)
    ]
    assert removal_prompt("p0", "a dog bowl", "dog", 0) == "remove the dog"  # one form only


def test_export_formats_default_and_unknown_format(tmp_path):
    assert set(FORMATS) == {"pipe", "instruct_pix2pix", "remove_pix2pix"} and ExportConfig().formats == FORMATS
    with pytest.raises(ConfigError, match=r"ExportConfig\.formats: 'webdataset' is not one of \('pipe', "):
        ExportConfig(formats=("pipe", "webdataset"))
    table = tables.PAIRS.schema.empty_table()
    # no pairs: no (zero-row, unreadable by `datasets`) shards and no card configs naming absent files
    result = export_pairs(table, {}, {}, tmp_path / "empty", ExportConfig())
    card = (tmp_path / "empty" / "README.md").read_text()
    assert result.files == [] and "configs:" not in card and "No pairs exported yet" in card


def test_exports_metadata_counts_the_removal_rows(demo, ok_pairs):
    from tests.support.pipeline_helpers import metadata_of

    _, unpartitioned = demo
    meta = metadata_of(unpartitioned, "exports")
    removal = sum(v for k, v in meta.items() if k.startswith("remove_pix2pix_"))
    assert removal == len(ok_pairs)
    assert any(f.startswith("remove_pix2pix/data/train-") for f in meta["files"])
    assert "remove_pix2pix" in meta["dataset_card"]

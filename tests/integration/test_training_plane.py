"""From pairs to a trained model: descriptions, instructions, splits, exports, checkpoint,
evaluation and the retraining automation, through the real Dagster assets on the demo source."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import dagster as dg
import duckdb
import pyarrow.parquet as pq
import pytest

from pbi_assets.resources import PBIProject
from pbi_ml import tables
from pbi_ml.storage import Storage
from tests.support.pipeline_helpers import check_results, metadata_of


@pytest.fixture(scope="module")
def demo(demo_run):
    root, partitioned, unpartitioned = demo_run
    assert all(r.success for r in partitioned) and unpartitioned.success
    return root, partitioned, unpartitioned


def _con(root):
    return duckdb.connect(str(Storage(root).catalog_path), read_only=True)


def test_every_pair_has_three_instruction_kinds_and_a_split(demo):
    root, *_ = demo
    con = _con(root)
    rows = con.execute(
        "SELECT category, description, instruction_class, instruction_vlm_llm, instruction_ref, instruction_check, split FROM pairs"
    ).fetchall()
    con.close()
    assert rows
    for category, description, cls, vlm, ref, check, split in rows:
        assert description, "the pixels describer always says something"
        assert cls.startswith(("add a ", "add an ")) and category in cls
        assert vlm and check
        assert ref == ""  # no refs file configured for the demo
        assert split in ("train", "test")
    assert {r[-1] for r in rows} == {"train", "test"}, "the demo keeps a few test images for evaluation"


def test_location_phrase_is_not_baked_into_stored_instructions(demo):
    root, *_ = demo
    con = _con(root)
    texts = [t for (t,) in con.execute("SELECT instruction_vlm_llm FROM instructions").fetchall()]
    locations = [loc for (loc,) in con.execute("SELECT DISTINCT object_location FROM pairs").fetchall()]
    con.close()
    assert len(texts) >= 5 and locations, "the demo has instructions and locations to compare"
    assert not [t for t in texts for loc in locations if t.endswith(f" at the {loc}")]


def test_no_image_in_both_splits_and_checks_pass(demo):
    root, partitioned, unpartitioned = demo
    checks = check_results(unpartitioned)
    assert checks.get("splits_disjoint") is True
    assert all(checks.values()), checks
    con = _con(root)
    both = con.execute("SELECT image_id FROM splits GROUP BY 1 HAVING count(DISTINCT split) > 1").fetchall()
    con.close()
    assert both == []


def test_pipe_export_has_the_release_columns_and_types(demo):
    datasets = pytest.importorskip("datasets")
    root, *_ = demo
    out = Storage(root).global_dir("exports")
    files = sorted(str(p) for p in (out / "pipe" / "data").glob("train-*.parquet"))
    assert files
    ds = datasets.load_dataset("parquet", data_files={"train": files}, split="train")
    assert ds.column_names == [
        "source_img",
        "target_img",
        "Instruction_VLM-LLM",
        "Instruction_Class",
        "Instruction_Ref_Dataset",
        "object_location",
        "target_img_dataset",
        "img_id",
        "ann_id",
    ]
    assert isinstance(ds.features["source_img"], datasets.Image) and isinstance(
        ds.features["target_img"], datasets.Image
    )
    for name in ds.column_names[2:]:
        assert ds.features[name] == datasets.Value("string"), name
    first = ds[0]
    assert first["source_img"].size == first["target_img"].size
    masks = datasets.load_dataset(
        "parquet", data_files=sorted(str(p) for p in (out / "pipe" / "masks").glob("train-*.parquet")), split="train"
    )
    assert masks.column_names == ["target_img_dataset", "img_id", "ann_id", "mask"]
    assert isinstance(masks.features["mask"], datasets.Image)
    card = (out / "README.md").read_text()
    assert "configs:" in card and "| demo | train |" in card and "Filter statistics" in card


def test_instruct_pix2pix_export_passes_the_diffusers_trainer_column_checks(demo):
    datasets = pytest.importorskip("datasets")
    root, *_ = demo
    files = sorted(
        str(p) for p in (Storage(root).global_dir("exports") / "instruct_pix2pix" / "data").glob("train-*.parquet")
    )
    dataset = datasets.load_dataset("parquet", data_files={"train": files})
    # examples/instruct_pix2pix/train_instruct_pix2pix.py: default column names, and this check
    column_names = dataset["train"].column_names
    for column in ("input_image", "edit_prompt", "edited_image"):  # --original_image_column etc. defaults
        if column not in column_names:
            raise ValueError(f"--{column} value '{column}' needs to be one of: {', '.join(column_names)}")
    row = dataset["train"][0]
    assert row["input_image"].mode == "RGB" and isinstance(row["edit_prompt"], str) and row["edit_prompt"]


def test_checkpoint_is_a_loadable_ip2p_pipeline_labelled_smoke(demo):
    root, _, unpartitioned = demo
    meta = metadata_of(unpartitioned, "checkpoint")
    assert meta["smoke_model"] is True and "SMOKE MODEL" in meta["warning"]
    assert meta["steps"] > 0 and meta["train_pairs"] > 0
    from diffusers import StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(meta["pipeline_dir"]))
    assert pipe.unet.config.in_channels == 8
    con = _con(root)
    (curve,) = con.execute("SELECT loss_curve FROM checkpoints").fetchone()
    con.close()
    assert len(json.loads(curve)) == meta["steps"]


def test_evaluation_reports_pixel_metrics_and_null_reasons_for_absent_weights(demo):
    root, _, unpartitioned = demo
    con = _con(root)
    row = con.execute("SELECT * FROM evaluations WHERE benchmark = 'pipe_test'").df().iloc[0]
    n_samples = con.execute("SELECT count(*) FROM evaluation_samples").fetchone()[0]
    con.close()
    assert row["n"] >= 1 and n_samples == row["n"]
    assert 0 <= row["l1"] <= 1 and 0 <= row["l2"] <= 1
    for metric in ("clip_i", "clip_t", "dino", "cmmd"):  # no weights offline: null, with the reason
        assert row[metric] != row[metric] or row[metric] is None  # NaN/None
        assert row[f"{metric}_null_reason"]
    meta = metadata_of(unpartitioned, "evaluation")
    assert "null:" in str(meta["pipe_test/clip_i"])
    assert "data:image/png;base64" in str(meta["grid"])


def test_weekly_schedule_requests_the_retraining_job():
    from pbi_assets.automation import weekly_retraining_schedule

    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.timezone.utc)
    )
    requests = weekly_retraining_schedule.evaluate_tick(context).run_requests
    assert len(requests) == 1
    assert weekly_retraining_schedule.job_name == "retraining_job"
    assert weekly_retraining_schedule.cron_schedule == "0 3 * * 1"


def test_growth_sensor_fires_on_growth_only(demo, tmp_path):
    from pbi_assets.automation import train_split_growth_sensor
    from pbi_ml.stages.training import current_train_pair_count, last_train_pair_count

    root, *_ = demo
    storage = Storage(root)
    current, last = current_train_pair_count(storage), last_train_pair_count(storage)
    assert current == last > 0

    def evaluate(data_root):
        with dg.build_sensor_context(resources={"pbi": PBIProject(data_root=str(data_root))}) as context:
            return train_split_growth_sensor(context)

    assert isinstance(evaluate(root), dg.SkipReason), "no growth since the checkpoint"
    empty = tmp_path / "empty"
    assert isinstance(evaluate(empty), dg.SkipReason), "no train pairs yet"
    # the train split grows: a copy of the data root where another partition's pairs arrived
    import shutil

    grown = tmp_path / "grown"
    shutil.copytree(root / "tables", grown / "tables")
    shutil.copytree(root / "global", grown / "global")
    split_files = sorted((grown / "tables" / "splits" / "demo").glob("*.parquet"))
    table = max((pq.read_table(f) for f in split_files), key=lambda t: t.num_rows)
    for i in range(3):
        pq.write_table(table, grown / "tables" / "splits" / "demo" / f"9{i}.parquet")
    request = evaluate(grown)
    assert isinstance(request, dg.RunRequest), request
    assert request.run_key == f"train-pairs-{current_train_pair_count(Storage(grown))}"


def test_magicbrush_add_subset_rule():
    from pbi_ml.stages.evaluation import is_magicbrush_add

    assert is_magicbrush_add("Add a dog on the grass") and is_magicbrush_add("put a hat on him")
    assert not is_magicbrush_add("remove the car") and not is_magicbrush_add("add a cat and a dog")
    assert not is_magicbrush_add("make the sand whiter")  # "and" only as a word, "add" only as a word
    assert not is_magicbrush_add("let's have a party")


def test_evaluation_on_a_magicbrush_parquet_uses_the_add_subset(demo, tmp_path):
    import io
    import shutil

    import numpy as np
    import pyarrow as pa
    from PIL import Image

    from pbi_ml.stages.evaluation import EvaluationConfig, run_evaluation
    from pbi_ml.stages.training import latest_checkpoint

    def png(seed):
        rng = np.random.default_rng(seed)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buf, format="PNG")
        return {"bytes": buf.getvalue(), "path": None}

    instructions = ["add a red ball", "remove the tree", "put a cup on the table", "add a cat and a dog"]
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "img_id": [str(i) for i in range(4)],
            "turn_index": [1, 1, 1, 1],
            "source_img": pa.array([png(i) for i in range(4)], image),
            "mask_img": pa.array([png(10 + i) for i in range(4)], image),
            "instruction": instructions,
            "target_img": pa.array([png(20 + i) for i in range(4)], image),
        }
    )
    path = tmp_path / "magicbrush_test.parquet"
    pq.write_table(table, path)
    root, *_ = demo
    shutil.copytree(root, tmp_path / "copy")  # other generation settings: not on the shared demo root
    storage = Storage(tmp_path / "copy")
    result = run_evaluation(
        storage,
        EvaluationConfig(magicbrush_parquet=str(path), num_inference_steps=2, max_samples=1),
        checkpoint=latest_checkpoint(storage),
    )
    rows = {r["benchmark"]: r for r in result.table.to_pylist()}
    assert rows["magicbrush_add"]["n"] == 1  # max_samples=1 of the 2 "add"/"put" rows
    full = run_evaluation(storage, EvaluationConfig(magicbrush_parquet=str(path), num_inference_steps=2))
    rows = {r["benchmark"]: r for r in full.table.to_pylist()}
    assert rows["magicbrush_add"]["n"] == 2 and rows["magicbrush_add"]["l1"] is not None
    assert {s["instruction"] for s in full.extra["samples"] if s["benchmark"] == "magicbrush_add"} == {
        instructions[0],
        instructions[2],
    }
    # the edits are an item stage: the sample the first run edited is not edited again, nor any of a re-run
    assert full.counts["magicbrush_add_edits_made_this_run"] == 1
    again = run_evaluation(storage, EvaluationConfig(magicbrush_parquet=str(path), num_inference_steps=2))
    assert again.counts["magicbrush_add_edits_made_this_run"] == again.counts["pipe_test_edits_made_this_run"] == 0
    assert again.table.equals(full.table)
    # an input that cannot be decoded fails its sample with the reason; the others are scored
    garbled = [{"bytes": b"not a png", "path": None}, *[png(i) for i in range(1, 4)]]
    broken = table.set_column(table.schema.get_field_index("source_img"), "source_img", pa.array(garbled, image))
    pq.write_table(broken, path)
    result = run_evaluation(storage, EvaluationConfig(magicbrush_parquet=str(path), num_inference_steps=2))
    assert result.counts["magicbrush_add_edits_failed"] == 1
    assert {r["benchmark"]: r["n"] for r in result.table.to_pylist()}["magicbrush_add"] == 1
    ckpt_id = result.extra["checkpoint"]["checkpoint_id"]
    edits = {
        r["sample_id"]: r for r in storage.read_table(tables.EVALUATION_EDITS, "magicbrush_add", ckpt_id).to_pylist()
    }
    assert edits["0-1"]["status"] == "failed" and edits["0-1"]["error"] == "image_unreadable"
    assert edits["2-1"]["status"] == "ok" and Path(edits["2-1"]["output_image"]).is_file()


def test_a_pair_whose_images_are_gone_fails_alone_with_its_reason(demo, tmp_path):
    import shutil

    from pbi_ml.describe import DescribeConfig
    from pbi_ml.stages.descriptions import run_descriptions

    root, *_ = demo
    copy = tmp_path / "copy"
    shutil.copytree(root / "tables", copy / "tables")
    shutil.copytree(root / "files", copy / "files")
    storage = Storage(copy)
    shard = max(
        ("000", "001", "002", "003"),
        key=lambda s: (
            storage.read_table(tables.PAIRS, "demo", s).num_rows if storage.has_table(tables.PAIRS, "demo", s) else 0
        ),
    )
    pairs = storage.read_table(tables.PAIRS, "demo", shard).to_pylist()
    # the files moved: point the table at the copy, then lose one pair's original photo
    for row in pairs:
        for column in ("source_image", "target_image", "mask", "edit_mask"):
            row[column] = row[column].replace(str(root), str(copy))
    import pyarrow as pa

    storage.write_table(
        tables.PAIRS,
        "demo",
        shard,
        pa.Table.from_pylist(pairs, schema=storage.read_table(tables.PAIRS, "demo", shard).schema),
    )
    Path(pairs[0]["target_image"]).unlink()
    from pbi_assets.partitions import PROJECT

    result = run_descriptions(storage, PROJECT.source("demo"), shard, DescribeConfig())
    rows = {r["pair_id"]: r for r in result.table.to_pylist()}
    assert rows[pairs[0]["pair_id"]]["error"] == "image_missing" and rows[pairs[0]["pair_id"]]["description"] is None
    assert all(r["description"] for pid, r in rows.items() if pid != pairs[0]["pair_id"])


def test_an_empty_llm_answer_falls_back_to_the_class_template_with_the_reason(demo, tmp_path):
    import shutil

    from pbi_assets.partitions import PROJECT
    from pbi_ml.instruct import InstructConfig
    from pbi_ml.stages.instructions import run_instructions

    class SilentLLM:  # an LLM backend that returns nothing for the first pair (as real ones sometimes do)
        def rewrite(self, descriptions, categories, keys):
            return ["" if i == 0 else f"add a {c}" for i, c in enumerate(categories)]

    root, *_ = demo
    copy = tmp_path / "copy"
    shutil.copytree(root / "tables", copy / "tables")
    storage = Storage(copy)
    shard = max(PROJECT.shard_keys, key=lambda s: storage.read_table(tables.PAIRS, "demo", s).num_rows)
    result = run_instructions(storage, PROJECT.source("demo"), shard, InstructConfig(batch_size=64), writer=SilentLLM())
    rows = result.table.to_pylist()
    assert rows[0]["instruction_check"] == "empty_instruction"
    assert rows[0]["instruction_vlm_llm"] == rows[0]["instruction_class"] and rows[0]["instruction_vlm_llm_raw"] is None
    assert all(r["instruction_check"] == "passed" for r in rows[1:])


def test_nothing_to_train_is_skipped_not_failed(tmp_path):
    """A data root without one train pair (every instance rejected, or nothing run yet): the
    unpartitioned assets succeed; checkpoint and evaluation say in their metadata why they did
    nothing."""
    from tests.support.pipeline_helpers import materialize_unpartitioned

    result = materialize_unpartitioned(tmp_path / "empty", raise_on_error=False)
    assert result.success
    assert metadata_of(result, "checkpoint")["skipped"].startswith("no train pairs")
    assert metadata_of(result, "evaluation")["skipped"].startswith("no checkpoint")


def test_a_copied_data_root_recomputes_nothing_and_training_resumes(demo, tmp_path):
    """The finished demo data root copied elsewhere with a new mtime on every file (as `cp -r`
    does), then the whole graph run there: no item computed in any stage, no PNG rewritten,
    training resumes from its last checkpoint, and every partitioned table is the original's
    (paths compared relative to the root). The copy with mtimes kept: test_item_stages."""
    import os
    import shutil

    from tests.support.pipeline_helpers import run_everything

    root, _, unpartitioned = demo
    copy = tmp_path / "moved"
    shutil.copytree(root, copy)
    for n, path in enumerate(sorted(p for p in copy.rglob("*") if p.is_file())):
        os.utime(path, ns=(10**18 + n, 10**18 + n))
    pngs = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (copy / "files").rglob("*.png")}

    def partitioned_tables(data_root: Path) -> dict[str, str]:
        return {
            str(p.relative_to(data_root)): repr(pq.read_table(p).to_pylist()).replace(
                str(data_root.resolve()), "<root>"
            )
            for spec in tables.PARTITIONED_TABLES
            for p in sorted((data_root / "tables" / spec.name).glob("*/*.parquet"))
        }

    before = partitioned_tables(root)
    partitioned, moved = run_everything("demo", copy)
    assert all(r.success for r in partitioned) and moved.success
    computed = {
        (event.asset_key.to_user_string(), event.partition): event.materialization.metadata[
            "items_computed_this_run"
        ].value
        for result in partitioned
        for event in result.get_asset_materialization_events()
        if "items_computed_this_run" in event.materialization.metadata
    }
    assert computed and set(computed.values()) == {0}, computed
    # the evaluation's edits too are an item stage: no edit made again
    assert metadata_of(moved, "evaluation")["pipe_test_edits_made_this_run"] == 0
    assert {p for p, (mtime, _) in pngs.items() if p.stat().st_mtime_ns != mtime} == set(), "no PNG rewritten"
    assert {p.relative_to(copy).parts[1] for p in pngs} >= {tables.PAIRS.name, tables.EVALUATION_EDITS.name}
    assert all(p.read_bytes() == pngs[p][1] for p in pngs)
    trained, resumed = metadata_of(unpartitioned, "checkpoint"), metadata_of(moved, "checkpoint")
    assert resumed["checkpoint_id"] == trained["checkpoint_id"]
    assert resumed["resumed_from_step"] == trained["steps"] > 0
    assert partitioned_tables(copy) == before

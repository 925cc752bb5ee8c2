"""The removal data plane through the real Dagster assets: demo and generated sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pbi_assets.partitions import PROJECT
from pbi_ml import tables
from pbi_ml.config import SourceIndexConfig
from pbi_ml.imageio import load_mask_png, load_rgb_path
from pbi_ml.masks import LOCATION_GRID
from pbi_ml.storage import Storage
from tests.support.pipeline_helpers import (
    DATA_PLANE,
    check_results,
    materialize_partition,
    materialize_unpartitioned,
    metadata_of,
)

CATALOG = [
    a
    for a in __import__("pbi_assets.definitions", fromlist=["x"]).UNPARTITIONED_ASSETS
    if a.key.to_user_string() == "catalog"
]


def _run_data_plane(source: str, root: Path):
    results = [materialize_partition(source, shard, root, selection=DATA_PLANE) for shard in PROJECT.shard_keys]
    results.append(materialize_unpartitioned(root, selection=CATALOG))
    return results


def _digest_tree(root: Path, stages=("tables", "files")) -> dict[str, str]:
    out = {}
    for stage in stages:
        for path in sorted((root / stage).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def demo_root(demo_run):
    root, partitioned, unpartitioned = demo_run
    results = [*partitioned, unpartitioned]
    assert all(r.success for r in results)
    return root, results


def test_demo_all_checks_pass_and_pairs_exist(demo_root):
    root, results = demo_root
    for result in results:
        assert all(check_results(result).values()), check_results(result)
    storage = Storage(root)
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    n_pairs = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
    n_index = con.execute("SELECT count(*) FROM source_index WHERE source = 'demo'").fetchone()[0]
    n_cand = con.execute("SELECT count(*) FROM candidates WHERE source = 'demo'").fetchone()[0]
    assert n_pairs >= 5, "the demo should yield several pairs"
    assert n_cand == n_index, "no instance silently disappears"
    columns = {r[0] for r in con.execute("DESCRIBE pairs").fetchall()}
    required = {
        "pair_id",
        "source",
        "shard",
        "image_id",
        "annotation_id",
        "category",
        "bbox_x",
        "bbox_y",
        "bbox_w",
        "bbox_h",
        "area_fraction",
        "object_location",
        "source_image",
        "target_image",
        "mask",
    }
    assert required <= columns
    assert {"source", "shard", "image_id", "annotation_id", "category", "area_fraction", "kept", "reject_reason"} <= {
        r[0] for r in con.execute("DESCRIBE candidates").fetchall()
    }
    # every kept candidate was removed K times; every rejected one has a reason
    assert con.execute("SELECT count(*) FROM candidates WHERE NOT kept AND reject_reason IS NULL").fetchone()[0] == 0
    kept = con.execute("SELECT count(*) FROM candidates WHERE kept").fetchone()[0]
    assert con.execute("SELECT count(*) FROM removals WHERE status = 'ok'").fetchone()[0] == 3 * kept
    con.close()


def test_pairs_are_exact_outside_the_edit_mask_and_changed_inside(demo_root):
    root, _ = demo_root
    storage = Storage(root)
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    rows = con.execute(
        "SELECT source_image, target_image, mask, edit_mask, object_location, width, height FROM pairs"
    ).fetchall()
    con.close()
    vocabulary = {cell for row in LOCATION_GRID for cell in row}
    for source_image, target_image, mask, edit_mask, location, width, height in rows:
        removed, original = load_rgb_path(source_image), load_rgb_path(target_image)
        object_mask, edit = load_mask_png(mask), load_mask_png(edit_mask)
        assert removed.shape == original.shape == (height, width, 3)
        assert np.array_equal(removed[~edit], original[~edit])
        assert (edit | ~object_mask).all(), "the edit mask covers the object"
        assert np.abs(removed[object_mask].astype(int) - original[object_mask].astype(int)).mean() > 1
        assert location in vocabulary


def test_rerun_skips_finished_work_and_gives_identical_bytes(demo_root):
    root, _ = demo_root
    before = _digest_tree(root)
    results = _run_data_plane("demo", root)
    assert all(r.success for r in results)
    for result in results[:-1]:
        assert metadata_of(result, "removals")["items_computed_this_run"] == 0
    after = _digest_tree(root)
    assert before == after


def test_crash_mid_partition_loses_and_duplicates_nothing(tmp_path, demo_root):
    """A backend that dies after two objects; the re-run finishes the rest; bytes equal a clean run."""
    from pbi_ml.config import CandidateConfig, ClassFilterConfig, RemovalConfig
    from pbi_ml.removal import make_inpainter
    from pbi_ml.stages.candidates import run_candidates
    from pbi_ml.stages.class_scores import run_class_scores
    from pbi_ml.stages.removals import run_removals
    from pbi_ml.stages.source_index import run_source_index

    clean_root, _ = demo_root
    source = PROJECT.source("demo")
    shard = max(PROJECT.shard_keys, key=lambda s: Storage(clean_root).read_table(tables.REMOVALS, "demo", s).num_rows)
    storage = Storage(tmp_path)
    run_source_index(storage, source, shard, SourceIndexConfig(num_shards=PROJECT.num_shards))
    run_candidates(storage, source, shard, CandidateConfig())
    run_class_scores(storage, source, shard, ClassFilterConfig())
    config = RemovalConfig(batch_size=1)
    real = make_inpainter(config)

    class DiesAfterTwo:
        name = real.name
        calls = 0

        def candidate_labels(self):
            return real.candidate_labels()

        def context_of(self, image, mask):
            return real.context_of(image, mask)

        def inpaint(self, images, masks, categories):
            DiesAfterTwo.calls += 1
            if DiesAfterTwo.calls > 2:
                raise RuntimeError("simulated crash (power cut)")
            return real.inpaint(images, masks, categories)

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_removals(storage, source, shard, config, inpainter=DiesAfterTwo())
    assert not storage.has_table(tables.REMOVALS, "demo", shard)
    records, _ = storage.ledger(tables.REMOVALS, "demo", shard).read()
    assert len(records) == 2, "the two finished objects are on disk"
    result = run_removals(storage, source, shard, config)
    assert result.counts["items_computed_this_run"] == result.counts["items"] - 2
    clean = Storage(clean_root).read_table(tables.REMOVALS, "demo", shard)
    assert result.table.num_rows == clean.num_rows
    assert result.table.column("annotation_id").to_pylist() == clean.column("annotation_id").to_pylist()
    for ours, theirs in zip(
        result.table.column("removal_image").to_pylist(), clean.column("removal_image").to_pylist(), strict=True
    ):
        assert Path(ours).read_bytes() == Path(theirs).read_bytes()


@pytest.mark.parametrize("source", ["gen_coco", "gen_lvis", "gen_oi"])
def test_generated_sources_run_end_to_end(tmp_path, source):
    results = _run_data_plane(source, tmp_path)
    assert all(r.success for r in results)
    for result in results:
        assert all(check_results(result).values()), check_results(result)
    storage = Storage(tmp_path)
    for shard in PROJECT.shard_keys:  # every partition has a valid table, even an empty one
        for table in (
            tables.SOURCE_INDEX,
            tables.CANDIDATES,
            tables.CLASS_SCORES,
            tables.REMOVALS,
            tables.REMOVAL_SCORES,
            tables.PAIRS,
        ):
            pq.read_table(storage.table_path(table, source, shard))
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    assert con.execute("SELECT count(*) FROM pairs").fetchone()[0] >= 1
    if source == "gen_lvis":
        reasons = {r[0] for r in con.execute("SELECT reject_reason FROM candidates").fetchall()}
        assert "image_missing" in reasons
    con.close()


def test_bad_inputs_are_rejected_with_reasons_and_the_run_goes_on(tmp_path):
    results = _run_data_plane("gen_bad", tmp_path)
    assert all(r.success for r in results)
    storage = Storage(tmp_path)
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    reasons = {r[0]: r[1] for r in con.execute("SELECT reject_reason, count(*) FROM candidates GROUP BY 1").fetchall()}
    for expected in ("image_unreadable", "image_missing", "invalid_mask", "path_escapes_root"):
        assert expected in reasons, reasons
    assert con.execute("SELECT count(*) FROM pairs").fetchone()[0] >= 1, "good items still become pairs"
    escaped = con.execute("SELECT image_file FROM candidates WHERE reject_reason = 'path_escapes_root'").fetchall()
    assert all(".." in r[0] or r[0].startswith("/") for r in escaped)
    con.close()


def test_catalog_is_read_only_for_users_and_sees_new_partitions_without_rebuild(demo_root, tmp_path):
    root, _ = demo_root
    storage = Storage(root)
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    with pytest.raises(duckdb.Error):
        con.execute("CREATE TABLE x AS SELECT 1")
    con.close()


def test_malformed_annotation_file_fails_fast_naming_the_file(tmp_path):
    from pbi_ml.errors import AnnotationFileError
    from pbi_ml.stages.source_index import run_source_index

    source = PROJECT.source("gen_malformed")
    with pytest.raises(AnnotationFileError) as info:
        run_source_index(Storage(tmp_path), source, "000", SourceIndexConfig(num_shards=PROJECT.num_shards))
    assert source.annotation_files[0] in str(info.value)
    result = materialize_partition("gen_malformed", "000", tmp_path, selection=DATA_PLANE[:1], raise_on_error=False)
    assert not result.success
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures and source.annotation_files[0] in failures[0].event_specific_data.error.to_string()


def test_sigkill_mid_partition_then_rerun_loses_and_duplicates_nothing(tmp_path):
    """A real kill -9 of the process doing the removals, then a re-run: same rows and bytes as a
    run that was never interrupted."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from pbi_ml.config import CandidateConfig, ClassFilterConfig, RemovalConfig
    from pbi_ml.stages.candidates import run_candidates
    from pbi_ml.stages.class_scores import run_class_scores
    from pbi_ml.stages.removals import run_removals
    from pbi_ml.stages.source_index import run_source_index

    source = PROJECT.source("demo")
    config = RemovalConfig(batch_size=1, num_candidates=6)  # slow enough to be caught mid-way

    def prepare(root):
        storage = Storage(root)
        for shard in PROJECT.shard_keys:
            run_source_index(storage, source, shard, SourceIndexConfig(num_shards=PROJECT.num_shards))
            run_candidates(storage, source, shard, CandidateConfig())
            run_class_scores(storage, source, shard, ClassFilterConfig())
        return storage

    clean = prepare(tmp_path / "clean")
    shard = max(
        PROJECT.shard_keys,
        key=lambda s: clean.read_table(tables.CANDIDATES, "demo", s).filter(pc.field("kept")).num_rows,
    )
    expected = run_removals(clean, source, shard, config).table
    total = expected.filter(pc.field("candidate") == 0).num_rows
    assert total >= 3

    killed = prepare(tmp_path / "killed")
    code = (
        "from pbi_ml.config import RemovalConfig, load_project_config\n"
        "from pbi_ml.stages.removals import run_removals\n"
        "from pbi_ml.storage import Storage\n"
        f"p = load_project_config()\n"
        f"run_removals(Storage({str(killed.root)!r}), p.source('demo'), {shard!r}, RemovalConfig(batch_size=1, num_candidates=6))\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2])
    ledger = killed.ledger(tables.REMOVALS, "demo", shard)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(ledger.read()[0]) < 1 and child.poll() is None:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done_at_kill = len(ledger.read()[0])
    assert 0 < done_at_kill < total, f"the kill should land mid-partition ({done_at_kill} of {total} done)"
    assert not killed.has_table(tables.REMOVALS, "demo", shard)

    result = run_removals(killed, source, shard, config)
    assert result.counts["items_computed_this_run"] == total - done_at_kill
    assert result.table.drop_columns(["removal_image"]).equals(expected.drop_columns(["removal_image"]))
    for ours, theirs in zip(
        result.table.column("removal_image").to_pylist(), expected.column("removal_image").to_pylist(), strict=True
    ):
        assert Path(ours).read_bytes() == Path(theirs).read_bytes()


def test_stale_temp_files_from_a_killed_writer_are_swept(tmp_path):
    import os
    import time

    storage = Storage(tmp_path)
    folder = storage.file_dir(tables.REMOVALS, "demo", "000", "42")
    folder.mkdir(parents=True)
    stale, fresh, kept = folder / ".cand0.png.abc.tmp", folder / ".cand1.png.def.tmp", folder / "cand2.png"
    for path in (stale, fresh, kept):
        path.write_bytes(b"x")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert storage.sweep_stale_temp_files([storage.file_dir(tables.REMOVALS, "demo", "000", "7"), folder.parent]) == 1
    assert not stale.exists() and fresh.exists() and kept.exists()

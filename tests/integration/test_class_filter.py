"""The paper's third pre-removal filter: CLIP similarity of the isolated object with its class."""

from __future__ import annotations

import pytest

from pbi_ml import reasons, tables
from pbi_ml.config import CandidateConfig, ClassFilterConfig, RemovalConfig, SourceIndexConfig, demo_source
from pbi_ml.storage import Storage
from tests.support.pipeline_helpers import metadata_of


def _prepared(root):
    from pbi_ml.stages.candidates import run_candidates
    from pbi_ml.stages.source_index import run_source_index

    storage, source = Storage(root), demo_source()
    run_source_index(storage, source, "000", SourceIndexConfig(num_shards=1))
    kept = run_candidates(storage, source, "000", CandidateConfig()).counts["kept"]
    return storage, source, kept


def _clip(tiny_clip_files, **overrides) -> ClassFilterConfig:
    config_path, weights = tiny_clip_files
    return ClassFilterConfig(
        backend="clip", clip_model=config_path, clip_pretrained=weights, device="cpu", batch_size=4, **overrides
    )


def test_clip_class_similarity_with_tiny_open_clip(tmp_path, tiny_clip_files):
    from pbi_ml.stages.class_scores import run_class_scores

    storage, source, kept = _prepared(tmp_path)
    result = run_class_scores(storage, source, "000", _clip(tiny_clip_files, min_class_sim=-1.0))
    rows = result.table.to_pylist()
    assert len(rows) == kept >= 8
    for row in rows:
        assert row["status"] == "ok" and row["clip_null_reason"] is None
        assert -1.0 <= row["clip_class_sim"] <= 1.0 and row["passed"] is True
    again = run_class_scores(storage, source, "000", _clip(tiny_clip_files, min_class_sim=-1.0))
    assert again.table.equals(result.table) and again.counts["items_computed_this_run"] == 0
    # a threshold between the scores splits the objects; each decision follows its score
    sims = sorted(r["clip_class_sim"] for r in rows)
    middle = (sims[len(sims) // 2 - 1] + sims[len(sims) // 2]) / 2
    split = run_class_scores(storage, source, "000", _clip(tiny_clip_files, min_class_sim=middle)).table.to_pylist()
    assert {r["passed"] for r in split} == {True, False}
    assert all(r["passed"] == (r["clip_class_sim"] >= middle) for r in split)


def test_rejected_objects_are_not_removed_and_the_candidates_view_says_why(tmp_path, tiny_clip_files):
    from pbi_ml.catalog import read_view
    from pbi_ml.stages.class_scores import run_class_scores
    from pbi_ml.stages.removals import run_removals

    storage, source, kept = _prepared(tmp_path)
    run_class_scores(storage, source, "000", _clip(tiny_clip_files, min_class_sim=1.5))  # nothing is that similar
    assert run_removals(storage, source, "000", RemovalConfig()).counts["items"] == 0
    view = read_view(storage, tables.CANDIDATES.name).to_pylist()
    scored = [r for r in view if r["class_filter"] is not None]
    assert len(scored) == kept
    for row in scored:
        assert row["kept"] is False and row["reject_reason"] == reasons.LOW_CLASS_SIMILARITY
        assert row["class_filter"] == "rejected" and row["clip_class_sim"] is not None
    assert all(r["kept"] is False for r in view if r["class_filter"] is None)  # rejected earlier, with their reason


def test_embedded_default_skips_the_filter_and_says_so(tmp_path):
    from pbi_ml.catalog import read_view
    from pbi_ml.stages.class_scores import SKIPPED_REASON, run_class_scores
    from pbi_ml.stages.removals import run_removals

    storage, source, kept = _prepared(tmp_path)
    result = run_class_scores(storage, source, "000", ClassFilterConfig())
    assert result.counts["objects_filter_skipped"] == kept
    for row in result.table.to_pylist():
        assert row["clip_class_sim"] is None and row["clip_null_reason"] == SKIPPED_REASON and row["passed"] is None
    assert run_removals(storage, source, "000", RemovalConfig()).counts["items"] == kept
    view = read_view(storage, tables.CANDIDATES.name).to_pylist()
    assert {r["class_filter"] for r in view if r["kept"]} == {"skipped"}


def test_the_asset_metadata_says_the_filter_was_skipped(demo_run):
    _, partitioned, _ = demo_run
    meta = metadata_of(partitioned[0], "class_scores")
    assert meta["filter"].startswith("skipped") and meta["backend"] == "off"


def test_min_class_sim_and_backend_are_validated():
    from pbi_ml.errors import ConfigError

    with pytest.raises(ConfigError, match=r"ClassFilterConfig\.backend"):
        ClassFilterConfig(backend="siglip")

"""The artifact audit on real photos (scikit-image's): a region blurred as a crude inpainter would
fill it must be detectable, an untouched region must not, and the graph's check must warn."""

from __future__ import annotations

from pathlib import Path

import cv2
import dagster as dg
import numpy as np
import pytest

from pbi_assets.definitions import PARTITIONED_ASSETS
from pbi_ml.audit import check_artifact_auc, partition_auc
from pbi_ml.catalog import build_catalog, query
from pbi_ml.config import ArtifactAuditConfig, demo_source
from pbi_ml.imageio import save_png
from pbi_ml.stages.artifact_audit import run_artifact_audit
from pbi_ml.storage import Storage, table_from_records
from pbi_ml.tables import ARTIFACT_AUDIT, PAIRS
from tests.support.pipeline_helpers import materialize_partition
from tests.support.source_fixtures import PHOTOS, photo

SHARD = "000"
BLUR_SIGMA = 6.0  # a heavy blur: the smooth fill a classical inpainter leaves in a large hole


def _pair_images(blur_sigma: float | None):
    """(source, target, region) per photo, mirrored or not, and two ellipse positions: the source
    is the target with the region blurred (None: the source IS the target)."""
    out = []
    for name in PHOTOS:
        for mirrored in (False, True):
            target = photo(name, mirrored)
            target = np.stack([target] * 3, axis=-1) if target.ndim == 2 else target[..., :3]
            h, w = target.shape[:2]
            for cx, cy in ((0.3, 0.35), (0.65, 0.6)):
                region = np.zeros((h, w), np.uint8)
                cv2.ellipse(region, (round(cx * w), round(cy * h)), (w // 8, h // 7), 0, 0, 360, 1, -1)
                region = region.astype(bool)
                source = target.copy()
                if blur_sigma is not None:
                    source[region] = cv2.GaussianBlur(target, (0, 0), blur_sigma)[region]
                out.append((source, target, region))
    return out


def _write_pairs(root: Path, blur_sigma: float | None, n: int | None = None) -> Storage:
    """A `pairs` table of the demo source's first shard whose files are the synthetic pairs."""
    storage = Storage(root)
    rows = []
    for i, (source, target, region) in enumerate(_pair_images(blur_sigma)[:n]):
        directory = root / "synthetic" / str(i)
        for name, image in (("source", source), ("target", target), ("edit_mask", region)):
            save_png(image, directory / f"{name}.png")
        rows.append(
            {
                "pair_id": f"demo/img{i}/ann{i}",
                **{"source": "demo", "shard": SHARD, "image_id": f"img{i}", "annotation_id": f"ann{i}"},
                "category": "thing",
                "source_image": str(directory / "source.png"),
                "target_image": str(directory / "target.png"),
                "mask": str(directory / "edit_mask.png"),
                "edit_mask": str(directory / "edit_mask.png"),
                "status": "ok",
            }
        )
    storage.write_table(PAIRS, "demo", SHARD, table_from_records(rows, PAIRS.schema))
    return storage


def _audit(tmp_path: Path, blur_sigma: float | None):
    return run_artifact_audit(_write_pairs(tmp_path, blur_sigma), demo_source(), SHARD, ArtifactAuditConfig())


def test_a_blurred_region_is_detectable(tmp_path):
    result = _audit(tmp_path, BLUR_SIGMA)
    assert result.counts["pairs"] == 24
    assert result.counts["auc"] > 0.9
    detectability = result.table.column("detectability").to_pylist()
    # the out-of-fold probability says which region is the inpainted one for most pairs
    assert np.mean(np.asarray(detectability) > np.asarray(result.table.column("target_probability").to_pylist())) > 0.9
    # the stored statistics: a heavy blur removes high-pass energy inside the region, not in its ring
    src, tgt = (
        result.table.column("source_hp_energy_ratio").to_numpy(),
        result.table.column("target_hp_energy_ratio").to_numpy(),
    )
    assert (src < tgt).all()


def test_an_untouched_region_is_at_chance(tmp_path):
    """Folds are cut by pair, so a pair's source and target regions, with equal features, get
    the same out-of-fold probability: the positives' and the negatives' scores are the same
    multiset, and the AUC is 0.5 exactly, whatever the classifier learnt. The band around it is
    what the design guarantees for any sample of untouched pairs, not a statistical tolerance."""
    result = _audit(tmp_path, None)
    assert result.counts["auc"] == pytest.approx(0.5, abs=1e-9)
    detectability = result.table.column("detectability").to_pylist()
    assert detectability == result.table.column("target_probability").to_pylist()


def test_a_pair_whose_image_is_corrupt_fails_alone_with_its_reason(tmp_path):
    storage = _write_pairs(tmp_path, BLUR_SIGMA)
    corrupt = tmp_path / "synthetic" / "3" / "source.png"
    corrupt.write_bytes(corrupt.read_bytes()[:100])  # a truncated PNG
    result = run_artifact_audit(storage, demo_source(), SHARD, ArtifactAuditConfig())
    rows = result.table.to_pylist()
    assert result.counts["pairs"] == 24 and result.counts["pairs_unreadable"] == 1
    assert rows[3]["detectability"] is None and rows[3]["detectability_null_reason"].startswith("image_unreadable")
    assert rows[3]["source_hp_energy"] is None
    others = rows[:3] + rows[4:]
    assert all(r["detectability"] is not None and r["detectability_null_reason"] is None for r in others)
    assert result.counts["auc"] > 0.9  # the 23 readable pairs are audited as before
    # too few pairs for an AUC: the check gives the AUC's reason, not the unreadable pair's
    run_artifact_audit(storage, demo_source(), SHARD, ArtifactAuditConfig(min_pairs=30))
    auc, n, reason = partition_auc(storage, "demo", SHARD)
    assert auc is None and n == 24 and reason == "too_few_pairs: 23 ok pairs < min_pairs 30"


def test_too_few_pairs_give_no_auc_and_say_why(tmp_path):
    storage = _write_pairs(tmp_path, BLUR_SIGMA, n=4)
    result = run_artifact_audit(storage, demo_source(), SHARD, ArtifactAuditConfig(min_pairs=10))
    assert "auc" not in result.counts
    assert result.extra["auc_null_reason"] == "too_few_pairs: 4 ok pairs < min_pairs 10"
    assert result.table.column("detectability").to_pylist() == [None] * 4
    assert set(result.table.column("detectability_null_reason").to_pylist()) == {result.extra["auc_null_reason"]}
    # the statistics are stored all the same
    assert None not in result.table.column("source_hp_energy").to_pylist()


def test_the_check_warns_on_a_detectable_partition_and_the_catalog_has_detectability(tmp_path):
    storage = _write_pairs(tmp_path, BLUR_SIGMA)
    audit_asset = next(a for a in PARTITIONED_ASSETS if a.key.to_user_string() == ARTIFACT_AUDIT.name)
    result = materialize_partition("demo", SHARD, tmp_path, selection=[audit_asset])
    [evaluation] = [e for e in result.get_asset_check_evaluations() if e.check_name == "artifact_audit_auc"]
    assert evaluation.passed is False
    assert evaluation.severity == dg.AssetCheckSeverity.WARN
    meta: dict = {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}
    assert meta["auc"] > 0.9 and meta["n_pairs"] == 24 and meta["bound"] == 0.8
    assert meta["auc_per_partition"].startswith("![AUC per partition](data:image/png;base64,")
    # the bound is the stage's `max_auc` (pbi.yaml `stages.artifact_audit`): above this AUC it passes
    passed, details = check_artifact_auc(storage, "demo", SHARD, ArtifactAuditConfig(max_auc=0.995))
    assert passed and details["auc"] == meta["auc"] and details["bound"] == 0.995

    build_catalog(storage)
    frame = query(storage, "SELECT pair_id, detectability FROM pairs ORDER BY detectability DESC")
    assert len(frame) == 24 and frame["detectability"].between(0.0, 1.0).all()


def test_the_clip_backend_audits_region_embeddings_and_keeps_the_identity_exact(tmp_path):
    """A tiny random CLIP (its embeddings mean nothing): the stage runs through the real loader
    and the region view, and the identity's AUC is 0.5 exactly for any features."""
    from tests.support.tiny_clip import save_tiny_clip

    model, weights = save_tiny_clip(tmp_path / "clip", name="pbi-tiny-clip-audit")
    config = ArtifactAuditConfig(backend="clip", clip_model=model, clip_pretrained=weights, device="cpu", batch_size=5)
    for blur_sigma, root in ((BLUR_SIGMA, tmp_path / "blurred"), (None, tmp_path / "identity")):
        result = run_artifact_audit(_write_pairs(root, blur_sigma), demo_source(), SHARD, config)
        assert result.counts["pairs"] == 24 and 0.0 <= result.counts["auc"] <= 1.0
        assert set(result.table.column("audit_backend").to_pylist()) == {"clip"}
        assert None not in result.table.column("detectability").to_pylist()
    assert result.counts["auc"] == pytest.approx(0.5, abs=1e-9)

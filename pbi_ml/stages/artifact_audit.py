"""The artifact_audit stage: how detectable is each pair's inpainted region? (docs/method.md#artifact-audit)

For every ok pair of the partition: the noise-residual statistics of its edited region in the
source (object removed) and in the target (the real photo), and `detectability`, the out-of-fold
probability of a cross-validated classifier (backend `stats`: those statistics; backend `clip`: CLIP
embeddings of the region) that the source's region is the inpainted one. The partition's ROC AUC
(0.5: no shortcut to learn) is in the metadata and checked by `artifact_audit_auc`. With fewer
than `min_pairs` ok pairs, detectability and the AUC are null with the reason. Sort or filter the
catalog's `pairs` by `detectability` to drop the most detectable pairs.
"""

from __future__ import annotations

import numpy as np

from pbi_ml.audit import auc_of, clip_region_embeddings, cross_validated, region_features, stats_vector
from pbi_ml.config import ArtifactAuditConfig, SourceConfig
from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_mask_png, load_rgb_path
from pbi_ml.stages.common import Progress, ProgressReporter, StageResult, batched, ok_pairs
from pbi_ml.storage import Storage, table_from_records
from pbi_ml.tables import ARTIFACT_AUDIT, AUDIT_FEATURES


def run_artifact_audit(
    storage: Storage, source: SourceConfig, shard: str, config: ArtifactAuditConfig, *, progress: Progress | None = None
) -> StageResult:
    pairs = ok_pairs(storage, source.name, shard)
    reporter = ProgressReporter(len(pairs), progress)
    failed: dict[int, str] = {}  # pair index -> why its images could not be read (that pair alone)
    audited: list[int] = []  # indices of the pairs whose images were read
    features: list[tuple[dict, dict]] = []  # per audited pair: (source region, target region) statistics
    embeddings: list[np.ndarray] = []  # backend clip: per batch, its sources' then its targets' embeddings
    for batch in batched(list(enumerate(pairs)), config.batch_size):
        sources, targets, regions = [], [], []
        for i, row in batch:
            try:
                region = load_mask_png(row["edit_mask"])
                removed, original = load_rgb_path(row["source_image"]), load_rgb_path(row["target_image"])
            except ItemError as error:
                failed[i] = str(error)
                continue
            audited.append(i)
            sources.append(removed)
            targets.append(original)
            regions.append(region)
            features.append(
                (region_features(removed, region, config.ring_px), region_features(original, region, config.ring_px))
            )
        if config.backend == "clip" and sources:
            embeddings.append(clip_region_embeddings(sources + targets, regions + regions, config))
        reporter.advance(len(batch))
    if config.backend == "clip":
        source_x = np.concatenate([e[: len(e) // 2] for e in embeddings]) if embeddings else np.zeros((0, 1))
        target_x = np.concatenate([e[len(e) // 2 :] for e in embeddings]) if embeddings else np.zeros((0, 1))
    else:
        source_x = np.array([stats_vector(s) for s, _ in features]).reshape(-1, len(AUDIT_FEATURES))
        target_x = np.array([stats_vector(t) for _, t in features]).reshape(-1, len(AUDIT_FEATURES))
    scores = cross_validated(source_x, target_x, config.folds, config.min_pairs)
    audited_at = {i: k for k, i in enumerate(audited)}

    rows = []
    for i, row in enumerate(pairs):
        k = audited_at.get(i)
        source_stats, target_stats = features[k] if k is not None else ({}, {})
        rows.append(
            {
                **{key: row[key] for key in ("pair_id", "source", "shard", "image_id", "annotation_id", "category")},
                "detectability": scores.detectability[k] if k is not None else None,
                "target_probability": scores.target_probability[k] if k is not None else None,
                "detectability_null_reason": failed.get(i, scores.null_reason),
                "audit_backend": config.backend,
                **{f"source_{name}": value for name, value in source_stats.items()},
                **{f"target_{name}": value for name, value in target_stats.items()},
            }
        )
    table = table_from_records(rows, ARTIFACT_AUDIT.schema)
    path = storage.write_table(ARTIFACT_AUDIT, source.name, shard, table)
    auc = auc_of(scores.detectability, scores.target_probability)
    counts: dict[str, float] = {"pairs": len(rows), "pairs_unreadable": len(failed)} | (
        {"auc": auc} if auc is not None else {}
    )
    extra = {"auc_null_reason": scores.null_reason} if scores.null_reason else {}
    return StageResult(table=table, path=path, counts=counts, extra=extra)

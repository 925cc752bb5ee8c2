"""The artifact audit (docs/method.md#artifact-audit): can a classifier tell a pair's inpainted
region from the same region of the real photo? If it can, a model trained on the pairs can learn
a shortcut: add the object where it sees inpainting artifacts.

Each ok pair gives two samples: the edited region (the pair's `edit_mask`) in the source (object
removed, label 1) and in the target (the real photo, label 0). Their features:

- backend `stats` (embedded, no weights): noise-residual statistics of the region, on luminance:
  `hp_energy` (log10 mean squared high-pass residual, the image minus its Gaussian blur),
  `local_var` (log10 mean variance in a small window), each also as `_ratio` (log of inside over a
  ring of `ring_px` around the region: the same photo's noise level outside, which the source and
  the target share), and `residual_kurtosis` (the residual's kurtosis inside: inpainting leaves
  smooth fills or repeated texture, camera noise is near Gaussian);
- backend `clip`: the CLIP image embedding of the isolated region (the CLIP filters' region view,
  `pbi_ml.scoring.clip.isolated_region`).

A standardised logistic regression is cross-validated with folds BY PAIR (a pair's two samples are
always in the same fold), and every sample gets its out-of-fold probability of being inpainted:
the source's is the pair's `detectability`. The partition's ROC AUC over all samples is 0.5 when
the classifier cannot tell the regions apart and 1 when it always can. Folding by pair makes the
identity exact: when a source region equals its target region, both samples have the same
features and the same fold model, so the same probability; the positive and negative scores are
then the same multiset and the AUC is exactly 0.5, whatever the classifier learnt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbi_ml.config import ArtifactAuditConfig
from pbi_ml.masks import dilate
from pbi_ml.storage import Storage
from pbi_ml.tables import ARTIFACT_AUDIT, AUDIT_FEATURES

HIGHPASS_SIGMA = 1.0  # the high-pass residual: luminance minus its Gaussian blur of this sigma (px)
LOCAL_WINDOW = 5  # the local-variance window (px)
EPS = 1e-8
PROBABILITY_DECIMALS = 6  # out-of-fold probabilities, rounded (float noise of the solver)
TOO_FEW_PAIRS = "too_few_pairs"


def _mean(values: np.ndarray, where: np.ndarray) -> float:
    return float(values[where].mean()) if where.any() else 0.0


def region_features(image: np.ndarray, region: np.ndarray, ring_px: int) -> dict[str, float]:
    """The noise-residual statistics (AUDIT_FEATURES) of `image` inside the HxW bool `region`."""
    import cv2

    region = region.astype(bool)
    outer = dilate(region, ring_px)
    ys, xs = np.nonzero(outer)
    if len(ys) == 0:  # an empty region has no statistics; all-zero features, the same for both images
        return dict.fromkeys(AUDIT_FEATURES, 0.0)
    margin = 4 * LOCAL_WINDOW  # the filters' support, so the crop computes what the whole image would
    y0, y1 = max(ys.min() - margin, 0), min(ys.max() + margin + 1, image.shape[0])
    x0, x1 = max(xs.min() - margin, 0), min(xs.max() + margin + 1, image.shape[1])
    rgb = image[y0:y1, x0:x1].astype(np.float32) / 255.0
    gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    residual = gray - cv2.GaussianBlur(gray, (0, 0), sigmaX=HIGHPASS_SIGMA, sigmaY=HIGHPASS_SIGMA)
    window = (LOCAL_WINDOW, LOCAL_WINDOW)
    local_var = np.maximum(cv2.blur(gray * gray, window) - cv2.blur(gray, window) ** 2, 0.0)
    inside, ring = region[y0:y1, x0:x1], outer[y0:y1, x0:x1] & ~region[y0:y1, x0:x1]
    energy = residual.astype(np.float64) ** 2
    e_in, e_ring = _mean(energy, inside), _mean(energy, ring)
    v_in, v_ring = _mean(local_var.astype(np.float64), inside), _mean(local_var.astype(np.float64), ring)
    fourth = _mean(energy * energy, inside)
    return {
        "hp_energy": float(np.log10(e_in + EPS)),
        "hp_energy_ratio": float(np.log((e_in + EPS) / (e_ring + EPS))),
        "local_var": float(np.log10(v_in + EPS)),
        "local_var_ratio": float(np.log((v_in + EPS) / (v_ring + EPS))),
        "residual_kurtosis": float(fourth / (e_in * e_in + EPS)),
    }


def stats_vector(features: dict[str, float]) -> list[float]:
    return [features[name] for name in AUDIT_FEATURES]


def clip_region_embeddings(
    images: list[np.ndarray], regions: list[np.ndarray], config: ArtifactAuditConfig
) -> np.ndarray:
    """(N, D) CLIP embeddings of each image's isolated region (the CLIP filters' region view)."""
    from pbi_ml.scoring.clip import cached_embedder, isolated_region

    embedder = cached_embedder(config.clip_model, config.clip_pretrained or None, config.device, config.batch_size)
    views = [isolated_region(image, region.astype(bool), 0, 0.0) for image, region in zip(images, regions, strict=True)]
    return embedder.embed_images(views)


@dataclass(frozen=True)
class AuditScores:
    """Out-of-fold P(inpainted) per pair, for its source region and its target region (None with a reason)."""

    detectability: list[float | None]
    target_probability: list[float | None]
    null_reason: str | None = None


def cross_validated(source_x: np.ndarray, target_x: np.ndarray, folds: int, min_pairs: int) -> AuditScores:
    """Out-of-fold probabilities of a standardised logistic regression, folds by pair (module doc)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = len(source_x)
    if n < min_pairs:
        reason = f"{TOO_FEW_PAIRS}: {n} ok pairs < min_pairs {min_pairs}"
        return AuditScores([None] * n, [None] * n, reason)
    x = np.concatenate([source_x, target_x]).astype(np.float64)
    y = np.concatenate([np.ones(n, dtype=int), np.zeros(n, dtype=int)])
    groups = np.tile(np.arange(n), 2)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    cv = GroupKFold(n_splits=min(folds, n))
    predicted = np.asarray(cross_val_predict(model, x, y, groups=groups, cv=cv, method="predict_proba"))
    proba = np.round(predicted[:, 1], PROBABILITY_DECIMALS)
    return AuditScores([float(p) for p in proba[:n]], [float(p) for p in proba[n:]])


def auc_of(detectability: list, target_probability: list) -> float | None:
    """ROC AUC of the source regions (positives) against the target regions; None without scores."""
    from sklearn.metrics import roc_auc_score

    scored = [(d, t) for d, t in zip(detectability, target_probability, strict=True) if d is not None and t is not None]
    if not scored:
        return None
    positives, negatives = [d for d, _ in scored], [t for _, t in scored]
    labels = [1] * len(positives) + [0] * len(negatives)
    return round(float(roc_auc_score(labels, positives + negatives)), PROBABILITY_DECIMALS)


def partition_auc(storage: Storage, source: str, shard: str) -> tuple[float | None, int, str | None]:
    """(AUC, ok pairs audited, why the AUC is null) of one partition's artifact_audit table."""
    rows = storage.read_table(ARTIFACT_AUDIT, source, shard).to_pylist()
    auc = auc_of([r["detectability"] for r in rows], [r["target_probability"] for r in rows])
    # the AUC's reason is on the audited rows; a pair whose images could not be read has its own
    audited = [r for r in rows if r["source_hp_energy"] is not None] or rows
    reasons = {r["detectability_null_reason"] for r in audited} - {None}
    reason = next(iter(sorted(reasons)), None) if rows else "no ok pairs in this partition"
    return auc, len(rows), reason if auc is None else None


def audit_aucs(storage: Storage) -> dict[str, float | None]:
    """ "source/shard" -> AUC of every audited partition with ok pairs, in path order."""
    import glob

    import pyarrow.parquet as pq

    scores: dict[str, tuple[list, list]] = {}
    columns = ["source", "shard", "detectability", "target_probability"]
    for path in sorted(glob.glob(storage.table_glob(ARTIFACT_AUDIT))):
        for row in pq.read_table(path, columns=columns).to_pylist():
            detectability, target = scores.setdefault(f"{row['source']}/{row['shard']}", ([], []))
            detectability.append(row["detectability"])
            target.append(row["target_probability"])
    return {partition: auc_of(*pair) for partition, pair in scores.items()}


def check_artifact_auc(storage: Storage, source: str, shard: str, config: ArtifactAuditConfig) -> tuple[bool, dict]:
    """The audit's check: passes while the partition's AUC is at most `max_auc` (or null, with the
    reason); the details plot every audited partition's AUC."""
    from pbi_ml.plots import bars_png, plot_or_note

    auc, n, reason = partition_auc(storage, source, shard)
    details: dict = {"auc": auc, "n_pairs": n, "bound": config.max_auc}
    if reason:
        details["auc_null_reason"] = reason
    aucs = audit_aucs(storage)
    labels, values = list(aucs), [a if a is not None else float("nan") for a in aucs.values()]
    lines = {"chance": 0.5, "bound": config.max_auc}
    details["auc_per_partition"] = plot_or_note(
        "AUC per partition", lambda: bars_png(labels, values, "artifact audit AUC", lines)
    )
    return auc is None or auc <= config.max_auc, details

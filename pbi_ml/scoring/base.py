"""What the filter-score stage scores, the score columns, and the entry point `score_objects`.

One object = the original photo, the object's mask, the dilated mask the inpainter filled, the K
inpainted candidates and the object's class name. Every candidate gets every score column:

    stats_consensus_std      (object) mean over the dilated-mask pixels of the per-pixel std across
                             the K candidates, on [0,1] intensities. High: the inpainter could not
                             agree on what belongs there (a failed removal).
    stats_boundary_contrast  how much the filled object area stands out from a ring just outside
                             the dilated mask (RGB mean / std distance, [0,1] units). High: something
                             unlike the background was painted in (often the object again).
    stats_change             mean absolute difference to the original inside the object mask, [0,1].
                             Near 0: the edit removed nothing.
    stats_texture_ratio      mean gradient magnitude (Sobel, grey) inside the object mask over that
                             in the ring. Low: a smooth smear where the surroundings are textured
                             (a classical fill of a large object); None when the ring is flat.
    clip_consensus_std       (object) spread of the CLIP embeddings of the isolated inpainted region
                             over the K candidates (docs/method.md#removal-filters, filter 1; definition in scoring/clip.py).
    clip_removal_sim         CLIP cosine of the candidate's isolated region with
                             "a photo of a <class>" (filter 2). High: the object is still there.
    clip_removal_sim_before  (object) the same for the original photo (the paper's exception).
    clip_importance_sim      CLIP cosine of the whole original and the whole candidate (the paper's
                             filter 3). Too high: the edit is too small to matter.
    clip_null_reason         why the clip columns are null, or None.

The stats columns need no weights and are always computed; the clip columns only with
`ScoringConfig.backend == "clip"`.

Every score looks at a candidate as the pairs stage will use it: the inpainted pixels inside the
dilated mask, the original's outside it (`as_paired`). A `context: crop` removal already is that;
a `context: full` one also went through the VAE outside the mask, a drift the pair does not keep
and that would otherwise lower its importance and disturb the ring statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pbi_ml import reasons
from pbi_ml.config import ScoringConfig
from pbi_ml.config.stages import SCORING_BACKENDS
from pbi_ml.errors import ConfigError, ItemError
from pbi_ml.masks import check_image, check_image_and_mask
from pbi_ml.tables import CLIP_COLUMNS, SCORE_COLUMNS

# What a score depends on beyond the configs: a change re-scores finished items.
# 2: candidates scored as paired (the original outside the dilated mask).
SCORES_VERSION = "2"
STATS_BACKEND_CLIP_REASON = "scoring backend 'stats' has no CLIP weights; set scoring.backend: clip"


@dataclass
class ObjectToScore:
    """One removed object: HxWx3 uint8 `original`, HxW bool `mask` and `dilated_mask`, the K
    HxWx3 uint8 inpainted `candidates` (same size as the original) and its class name."""

    original: np.ndarray
    mask: np.ndarray
    dilated_mask: np.ndarray
    candidates: list[np.ndarray]
    category: str


def check_object(obj: ObjectToScore) -> None:
    """Raise ItemError when an object cannot be scored (no candidates, size mismatch, empty mask)."""
    if not obj.candidates:
        raise ItemError(reasons.NO_CANDIDATES, obj.category)
    obj.original, obj.mask = check_image_and_mask(obj.original, obj.mask)
    obj.original, obj.dilated_mask = check_image_and_mask(obj.original, obj.dilated_mask)
    shape = obj.original.shape
    for k, candidate in enumerate(obj.candidates):
        candidate = check_image(candidate, f"candidate {k}")
        if candidate.shape != shape:
            raise ItemError(reasons.REMOVAL_SIZE_MISMATCH, f"candidate {k}: {candidate.shape} vs {shape}")


def as_paired(obj: ObjectToScore) -> ObjectToScore:
    """`obj` with each candidate's pixels outside the dilated mask replaced by the original's."""
    outside = ~(obj.dilated_mask | obj.mask)
    candidates = []
    for candidate in obj.candidates:
        paired = candidate.copy()
        paired[outside] = obj.original[outside]
        candidates.append(paired)
    return ObjectToScore(obj.original, obj.mask, obj.dilated_mask, candidates, obj.category)


def score_objects(objects: list[ObjectToScore], config: ScoringConfig, embedder=None) -> list[list[dict]]:
    """Per object, per candidate, a dict with every column of SCORE_COLUMNS.

    The CLIP calls of all objects and candidates are batched together. `embedder` (a
    `pbi_ml.clip_embedder.ClipEmbedder`) overrides the one built from the config (and cached per
    process). Raises ItemError for an object that cannot be scored (checked before any model runs),
    ConfigError for an unknown backend or CLIP weights that cannot be loaded.
    """
    if config.backend not in SCORING_BACKENDS:
        raise ConfigError(f"scoring backend {config.backend!r} not one of {SCORING_BACKENDS}")
    from pbi_ml.scoring.stats import stats_scores

    for obj in objects:
        check_object(obj)
    objects = [as_paired(obj) for obj in objects]
    rows = [stats_scores(obj) for obj in objects]
    if config.backend == "clip":
        from pbi_ml.scoring.clip import clip_scores

        clip_rows = clip_scores(objects, config, embedder=embedder)
        for object_rows, object_clip in zip(rows, clip_rows, strict=True):
            for row, clip_row in zip(object_rows, object_clip, strict=True):
                row.update(clip_row)
                row["clip_null_reason"] = None
    else:
        for object_rows in rows:
            for row in object_rows:
                row.update({name: None for name in CLIP_COLUMNS})
                row["clip_null_reason"] = STATS_BACKEND_CLIP_REASON
    return [[{name: row[name] for name in SCORE_COLUMNS} for row in object_rows] for object_rows in rows]

"""The CLIP scoring backend (docs/method.md#removal-filters): consensus, multimodal removal check, importance.

Views embedded per object (all objects and candidates of a call go through the model together):

- the isolated region of each candidate and of the original: `pbi_ml.masks.isolate_region` on the
  dilated mask (the area the inpainter filled) with `isolation_dilation_px` / `isolation_blur_sigma`,
  i.e. the region pasted on the image's mean colour through a dilated, blurred mask, then cropped
  to a box around the dilated mask padded by ISOLATION_CROP_PAD of its size on each side, then
  padded to a square with the same colour (CLIP's centre crop keeps the whole object);
- the whole original and each whole candidate, padded to a square with the image's mean colour so
  CLIP's centre crop does not cut off an object near a long side.

clip_consensus_std (filter 1) is the root-mean-square distance of the K L2-normalised
region embeddings e_k to their mean m:

    clip_consensus_std = sqrt( (1/K) * sum_k ||e_k - m||^2 ) = sqrt( sum_d Var_k(e_kd) )

i.e. the "std of the embeddings" taken over the whole vector (the square root of the summed
per-dimension population variances), independent of the embedding width. For unit vectors with
mean pairwise cosine c it equals sqrt((K-1)/K * (1-c)): with K=3, the paper's sweep 0.11-0.20
corresponds to candidates whose region embeddings agree at cosine 0.98-0.94, the range where CLIP
still sees "the same kind of content" versus clearly different content. The per-dimension mean std
would instead shrink with the width (about that value / sqrt(D), ~0.005 for ViT-L/14) and could
not match the published sweep. None when K < 2.

clip_removal_sim (filter 2): cosine of the candidate's region with "a photo of a <class>";
clip_removal_sim_before: the same for the original's region; clip_importance_sim (filter 3):
cosine of whole original and whole candidate.
"""

from __future__ import annotations

import functools

import numpy as np

from pbi_ml.config import ScoringConfig
from pbi_ml.errors import ConfigError
from pbi_ml.masks import bbox_of, crop_box, isolate_region

CLASS_PROMPT = "a photo of a {category}"  # the class prompt of the class filter and the removal filter
# What CLIP sees, in the config id of every CLIP-scored stage: region crops padded to a square with
# the isolation background, and class names cleaned as in every model prompt. A change redoes the
# CLIP-scored items (and only those).
CLIP_VIEW_VERSION = "view2"
ISOLATION_CROP_PAD = 0.15
# Scores are rounded to 6 decimals: float32 results can differ in the last bits with the batch
# composition (BLAS blocking), which depends on which objects share a call; the thresholds live
# at the 1e-2 scale.
SCORE_DECIMALS = 6


@functools.lru_cache(maxsize=2)
def cached_embedder(model_name: str, pretrained: str | None, device: str, batch_size: int):
    """One loaded ClipEmbedder per (model, weights, device, batch size) and process."""
    from pbi_ml.clip_embedder import ClipEmbedder

    embedder = ClipEmbedder(model_name, pretrained, device=device, batch_size=batch_size)
    try:
        embedder.load()
    except Exception as exc:  # offline without weights, unknown tag, corrupt checkpoint ...
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(
            f"scoring backend 'clip' could not load open_clip model {model_name!r} with weights "
            f"{pretrained!r}: {type(exc).__name__}: {first_line}"
        ) from exc
    return embedder


def isolated_region(image: np.ndarray, dilated_mask: np.ndarray, dilation_px: int, blur_sigma: float) -> np.ndarray:
    """The paper's region isolation (docs/method.md#region-isolation) of `image` through `dilated_mask`, cropped around the mask
    (also the view the pre-removal class filter scores)."""
    mean_colour = image.reshape(-1, 3).mean(axis=0)  # the isolation background, computed once
    isolated = isolate_region(image, dilated_mask, dilation_px, blur_sigma, mean_colour)
    x0, y0, x1, y1 = crop_box(bbox_of(dilated_mask), image.shape, pad=ISOLATION_CROP_PAD)
    # padded to a square with the same background: CLIP's preprocessing centre-crops to a square,
    # which would cut the ends off an elongated object (a ski, a person)
    return square_padded(np.ascontiguousarray(isolated[y0:y1, x0:x1]), fill=np.rint(mean_colour))


def class_prompt(category: str) -> str:
    """ "a photo of a <class>", the class name cleaned as in every model prompt ("bow_(weapon)" -> "bow")."""
    from pbi_ml.instruct.grammar import clean_category

    return CLASS_PROMPT.format(category=clean_category(category))


def square_padded(image: np.ndarray, fill: np.ndarray | None = None) -> np.ndarray:
    """Pad to a centred square with `fill` (default: the image's mean colour), so that a centre
    crop keeps everything."""
    h, w = image.shape[:2]
    side = max(h, w)
    if h == w:
        return image
    out = np.empty((side, side, 3), dtype=np.uint8)
    out[:] = np.rint(image.reshape(-1, 3).mean(axis=0)) if fill is None else fill
    top, left = (side - h) // 2, (side - w) // 2
    out[top : top + h, left : left + w] = image
    return out


def embedding_spread(embeddings: np.ndarray) -> float | None:
    """sqrt(mean_k ||e_k - mean||^2) of (K, D) embeddings; None for K < 2."""
    if len(embeddings) < 2:
        return None
    e = embeddings.astype(np.float64)
    return round(float(np.sqrt(((e - e.mean(axis=0)) ** 2).sum(axis=1).mean())), SCORE_DECIMALS)


def clip_scores(objects: list, config: ScoringConfig, embedder=None) -> list[list[dict]]:
    """The four clip_* columns per object and candidate (objects already checked)."""
    if embedder is None:
        embedder = cached_embedder(config.clip_model, config.clip_pretrained or None, config.device, config.batch_size)

    images: list[np.ndarray] = []
    layout = []  # per object: index of its first image; order: K regions, original region, original whole, K wholes
    for obj in objects:
        dilated = obj.dilated_mask.astype(bool) | obj.mask.astype(bool)
        layout.append(len(images))
        iso = (config.isolation_dilation_px, config.isolation_blur_sigma)
        images += [isolated_region(c, dilated, *iso) for c in obj.candidates]
        images.append(isolated_region(obj.original, dilated, *iso))
        images.append(square_padded(obj.original))
        images += [square_padded(c) for c in obj.candidates]
    prompts = sorted({class_prompt(obj.category) for obj in objects})

    image_emb = embedder.embed_images(images)
    text_emb = dict(zip(prompts, embedder.embed_texts(prompts), strict=True))

    out = []
    for obj, start in zip(objects, layout, strict=True):
        k = len(obj.candidates)
        regions = image_emb[start : start + k]
        region_before = image_emb[start + k]
        whole_before = image_emb[start + k + 1]
        wholes = image_emb[start + k + 2 : start + 2 * k + 2]
        text = text_emb[class_prompt(obj.category)]
        consensus = embedding_spread(regions)
        before = _cos(region_before, text)
        out.append(
            [
                {
                    "clip_consensus_std": consensus,
                    "clip_removal_sim": _cos(regions[i], text),
                    "clip_removal_sim_before": before,
                    "clip_importance_sim": _cos(whole_before, wholes[i]),
                }
                for i in range(k)
            ]
        )
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two L2-normalised embeddings, rounded to SCORE_DECIMALS."""
    return round(float(np.dot(a.astype(np.float64), b.astype(np.float64))), SCORE_DECIMALS)

"""The embedded scoring backend: pixel statistics, no weights, CPU only.

These columns measure pixels, not semantics: they catch removals that changed nothing, that
painted something unlike the surroundings, or where the K candidates disagree. They cannot tell
that a smooth, background-coloured fill still looks like the class (that needs CLIP).
"""

from __future__ import annotations

import numpy as np

from pbi_ml.masks import dilate

# The ring the fill is compared with: just outside the dilated mask, as wide as this fraction of
# the square root of the dilated mask's area (so it scales with the object), at least RING_MIN_PX.
RING_FRACTION = 0.2
RING_MIN_PX = 3


def stats_scores(obj) -> list[dict]:
    """stats_consensus_std, stats_boundary_contrast, stats_change for each candidate of `obj`
    (an ObjectToScore that passed `check_object`)."""
    mask = obj.mask.astype(bool)
    dilated = obj.dilated_mask.astype(bool) | mask
    ring_px = max(RING_MIN_PX, int(round(RING_FRACTION * np.sqrt(dilated.sum()))))

    # work on a crop around the dilated mask plus the ring: the rest of the image plays no part
    ys, xs = np.nonzero(dilated)
    h, w = mask.shape
    y0, y1 = max(ys.min() - ring_px - 1, 0), min(ys.max() + ring_px + 2, h)
    x0, x1 = max(xs.min() - ring_px - 1, 0), min(xs.max() + ring_px + 2, w)
    crop = (slice(y0, y1), slice(x0, x1))
    mask_c, dilated_c = mask[crop], dilated[crop]
    ring = dilate(dilated_c, ring_px) & ~dilated_c
    if not ring.any():  # the dilated mask covers the whole image: compare with the dilation ring
        ring = dilated_c & ~mask_c

    original = _unit(obj.original[crop])
    candidates = [_unit(c[crop]) for c in obj.candidates]

    consensus = consensus_std([c[crop][dilated_c] for c in obj.candidates])
    rows = []
    for raw, candidate in zip(obj.candidates, candidates, strict=True):
        rows.append(
            {
                "stats_consensus_std": consensus,
                "stats_boundary_contrast": boundary_contrast(candidate, mask_c, ring),
                "stats_change": float(np.abs(candidate[mask_c] - original[mask_c]).mean()),
                "stats_texture_ratio": texture_ratio(raw[crop], mask_c, ring),
            }
        )
    return rows


def consensus_std(regions: list[np.ndarray]) -> float | None:
    """Mean over pixels and channels of the per-pixel std (population, ddof=0) across candidates.

    `regions` are the K candidates' (n, 3) uint8 pixels; the result is in [0,1] units (computed in
    0-255 units so identical candidates give exactly 0). None for fewer than two candidates:
    disagreement needs at least two.
    """
    if len(regions) < 2:
        return None
    return float(np.stack(regions).astype(np.float64).std(axis=0).mean() / 255.0)


def boundary_contrast(image: np.ndarray, region: np.ndarray, ring: np.ndarray) -> float | None:
    """Colour-statistics distance between `region` and `ring` of `image` ([0,1] RGB):
    sqrt(mean over channels of (mean difference^2 + std difference^2)). 0 = same colour and
    texture level; a flat fill of a far colour approaches ~0.5-0.7. None if the ring is empty."""
    if not region.any() or not ring.any():
        return None
    inside, outside = image[region], image[ring]
    d_mean = inside.mean(axis=0) - outside.mean(axis=0)
    d_std = inside.std(axis=0) - outside.std(axis=0)
    return float(np.sqrt(np.mean(d_mean**2 + d_std**2)))


# a ring whose mean gradient is under this (in [0,1] grey per pixel) is flat: no texture to lose
FLAT_RING_GRADIENT = 0.01


def texture_ratio(image: np.ndarray, region: np.ndarray, ring: np.ndarray) -> float | None:
    """Mean Sobel gradient magnitude of the grey image inside `region` over that in `ring`.

    Classical inpainting of a large object leaves a smooth smear: its texture ratio falls well under
    1 when the surroundings are textured. None when the ring is flat (nothing to compare with)."""
    import cv2

    if not region.any() or not ring.any():
        return None
    grey = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    magnitude = np.sqrt(gx * gx + gy * gy)
    outside = float(magnitude[ring].mean())
    if outside < FLAT_RING_GRADIENT:
        return None
    return round(float(magnitude[region].mean()) / outside, 6)


def _unit(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) / 255.0

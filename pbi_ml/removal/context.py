"""The inpainting window of one object: `context: crop` (default) or `context: full`.

Removing a small object by inpainting the whole photo at 512 px leaves it a tiny hole: a COCO
object of median size (0.4 % of a 640x480 image, ~35 px; ~65 px once dilated by 15 px) becomes
about 6 latents wide after the 640 -> 512 shrink and the VAE's factor 8. `crop` instead inpaints
an object-centred square window, resized to `resolution` x `resolution`, and pastes the result
back through the (dilated) mask, so outside the mask the output is the original pixel for pixel.

    side = max(min_context_px, context_scale * the dilated mask's box side)

clamped to the image's shorter side, centred on the box, shifted to lie inside the image. With
the defaults (384 px, x3) that median object gets a 384 px window and a hole about 11 latents
wide. When the box does not fit in any square inside the image (an object wider than the
image's shorter side), the object falls back to `full` for that object, and its rows say so.

Every crop of a batch has the same shape (`resolution`^2), so batches are full whatever the
photos' aspect ratios.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pbi_ml.masks import bbox_of

LATENT_FACTOR = 8  # SD's VAE: one latent per 8x8 pixels


@dataclass(frozen=True)
class Window:
    """A square `side` x `side` window at (top, left) of the original image."""

    top: int
    left: int
    side: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.side), slice(self.left, self.left + self.side)


def context_window(mask: np.ndarray, min_context_px: int, context_scale: float) -> Window | None:
    """The crop window of a dilated mask (see the module docstring); None when the box does not
    fit inside any square of the image (use the full image)."""
    height, width = mask.shape
    left, top, box_w, box_h = bbox_of(mask)
    bottom, right = top + box_h, left + box_w
    box_side = max(box_w, box_h)
    limit = min(height, width)
    if box_side > limit:
        return None
    side = min(limit, max(int(min_context_px), math.ceil(context_scale * box_side)))

    def start(lo: int, hi: int, length: int) -> int:
        centre = (lo + hi) / 2
        return int(min(max(round(centre - side / 2), 0), length - side))

    return Window(top=start(top, bottom, height), left=start(left, right, width), side=side)


def crop_to_window(image: np.ndarray, mask: np.ndarray, window: Window, resolution: int):
    """The window of the image (INTER_AREA when shrinking, bicubic when enlarging) and of the
    bool mask (nearest), resized to resolution x resolution."""
    import cv2

    rows, cols = window.slices()
    crop, crop_mask = image[rows, cols], mask[rows, cols]
    if window.side == resolution:
        return np.ascontiguousarray(crop), crop_mask.copy()
    interpolation = cv2.INTER_AREA if window.side > resolution else cv2.INTER_CUBIC
    work_image = cv2.resize(crop, (resolution, resolution), interpolation=interpolation)
    work_mask = cv2.resize(crop_mask.astype(np.uint8), (resolution, resolution), interpolation=cv2.INTER_NEAREST) > 0
    return work_image, work_mask


def paste_through_mask(original: np.ndarray, mask: np.ndarray, window: Window, inpainted: np.ndarray) -> np.ndarray:
    """The original with the inpainted window (resized back to the window, bicubic) pasted in
    where the mask is True: outside the mask every pixel is the original's."""
    import cv2

    rows, cols = window.slices()
    patch = inpainted
    if patch.shape[0] != window.side:
        patch = cv2.resize(inpainted, (window.side, window.side), interpolation=cv2.INTER_CUBIC)
    out = original.copy()
    region = out[rows, cols]
    inside = mask[rows, cols]
    region[inside] = patch[inside]
    return out


def hole_width_in_latents(work_mask: np.ndarray) -> float:
    """The wider side of the mask's box in the working image, in latents (pixels / 8)."""
    _, _, box_w, box_h = bbox_of(work_mask)
    return max(box_w, box_h) / LATENT_FACTOR

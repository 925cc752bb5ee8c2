"""Classical inpainting with OpenCV: the embedded removal default (CPU, no weights, no download).

Each object gets K candidates from a fixed list of (method, radius) pairs, cycled when K is larger
than the list (a cycled candidate repeats an earlier one byte for byte):

    telea r=3, ns r=5, telea r=9, ns r=3, telea r=5, ns r=9

`telea` is Telea's fast-marching method (cv2.INPAINT_TELEA), `ns` the Navier-Stokes based method
(cv2.INPAINT_NS); the radius is the neighbourhood each filled pixel draws from. Classical
inpainting propagates the surrounding texture and colour into the hole: it removes objects from
smooth backgrounds well and smears on structured ones; the candidates differ enough for the
scoring stage's consensus measure to see where they disagree.

For speed on large photos only a padded crop around the mask is inpainted and pasted back, so
every pixel outside the mask is the original, byte for byte. Both methods only read pixels within
a few radii of the hole, so the crop gives the same bytes as inpainting the whole image.
"""

from __future__ import annotations

import numpy as np

from pbi_ml.config import RemovalConfig
from pbi_ml.errors import ConfigError
from pbi_ml.masks import bbox_of, crop_box
from pbi_ml.removal.base import check_batch

# (method, radius) per candidate, in order; cycled when num_candidates is larger.
OPENCV_CANDIDATES: tuple[tuple[str, int], ...] = (
    ("telea", 3),
    ("ns", 5),
    ("telea", 9),
    ("ns", 3),
    ("telea", 5),
    ("ns", 9),
)
CROP_PAD_FRACTION = 0.25  # of the mask's bbox size, on each side ...
CROP_MARGIN_PX = 16  # ... on top of the largest radius plus this many pixels


class OpenCVInpainter:
    """K classical inpaintings per object (Telea / Navier-Stokes at several radii)."""

    name = "opencv"

    def __init__(self, config: RemovalConfig):
        if config.num_candidates < 1:
            raise ConfigError(f"removal: num_candidates must be >= 1, got {config.num_candidates}")
        self.config = config
        self.candidates = [OPENCV_CANDIDATES[k % len(OPENCV_CANDIDATES)] for k in range(config.num_candidates)]

    def context_of(self, image: np.ndarray, mask: np.ndarray) -> str:
        return "native"  # full resolution, a padded crop around the mask (module docstring)

    def candidate_labels(self) -> list[str]:
        return [f"{method} r={radius}" for method, radius in self.candidates]

    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], categories: list[str]
    ) -> list[list[np.ndarray]]:
        """Per item, K inpainted copies of the image (HxWx3 uint8, original size)."""
        return [self._inpaint_one(image, mask) for image, mask in check_batch(images, masks, categories)]

    def _inpaint_one(self, image: np.ndarray, mask: np.ndarray) -> list[np.ndarray]:
        import cv2

        x0, y0, x1, y1 = inpaint_crop(mask, max(radius for _, radius in self.candidates))
        crop = np.ascontiguousarray(image[y0:y1, x0:x1])
        crop_mask = np.ascontiguousarray(mask[y0:y1, x0:x1]).astype(np.uint8)
        flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
        done: dict[tuple[str, int], np.ndarray] = {}
        out = []
        for method, radius in self.candidates:
            if (method, radius) in done:  # a cycled candidate: the same bytes, its own array
                out.append(done[(method, radius)].copy())
                continue
            result = image.copy()
            result[y0:y1, x0:x1] = cv2.inpaint(crop, crop_mask, radius, flags[method])
            done[(method, radius)] = result
            out.append(result)
        return out


def inpaint_crop(mask: np.ndarray, radius: int) -> tuple[int, int, int, int]:
    """The (x0, y0, x1, y1) region the OpenCV backend inpaints: the mask's bbox grown by
    `radius + CROP_MARGIN_PX` pixels and then by CROP_PAD_FRACTION of its size, clipped to the image."""
    x, y, w, h = bbox_of(mask)
    margin = radius + CROP_MARGIN_PX
    return crop_box((x - margin, y - margin, w + 2 * margin, h + 2 * margin), mask.shape, pad=CROP_PAD_FRACTION)

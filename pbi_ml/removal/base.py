"""Object removal by inpainting: the backend interface and the input checks every backend shares.

docs/method.md#removal: each kept object is inpainted away K times (K = `RemovalConfig.num_candidates`,
the paper used 3) so the scoring stage can measure how much the candidates agree. The caller
dilates the masks first (`pbi_ml.masks.dilate` with `RemovalConfig.dilation_px`); an inpainter
receives the already-dilated masks and repaints exactly that area.

Two backends (pbi_ml/removal/__init__.py `make_inpainter` picks one):
- `opencv` (embedded default, CPU, no weights): classical Telea / Navier-Stokes inpainting;
- `diffusers`: the paper's recipe, Stable Diffusion 1.5 inpainting (pbi_ml/removal/sd_inpaint.py).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from pbi_ml.masks import check_image_and_mask


class Inpainter(Protocol):
    """What every removal backend provides."""

    name: str

    def candidate_labels(self) -> list[str]:
        """K short labels, one per candidate, in candidate order (e.g. "telea r=3", "sd seed=1")."""
        ...

    def context_of(self, image: np.ndarray, mask: np.ndarray) -> str:
        """How much of the image the object is inpainted in: "crop" or "full" (diffusers,
        pbi_ml/removal/context.py) or "native" (opencv: full resolution, around the mask)."""
        ...

    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], categories: list[str]
    ) -> list[list[np.ndarray]]:
        """Per item, K inpainted HxWx3 uint8 images at the item's original size.

        `images`: HxWx3 uint8 originals (sizes may differ per item); `masks`: HxW bool, already
        dilated, True where the object is to be removed; `categories`: the class names.
        Deterministic: the same inputs and config give the same bytes.
        """
        ...


def check_item(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate one (image, mask) pair; returns (uint8 HxWx3 image, bool HxW mask).

    Raises ItemError with reason `bad_image`, `bad_mask`, `mask_size_mismatch` or `empty_mask`.
    """
    return check_image_and_mask(image, mask)


def check_batch(
    images: list[np.ndarray], masks: list[np.ndarray], categories: list[str]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate a batch: equal lengths, then every item with `check_item`."""
    if not (len(images) == len(masks) == len(categories)):
        raise ValueError(
            f"inpaint: {len(images)} images, {len(masks)} masks, {len(categories)} categories; lengths must match"
        )
    return [check_item(image, mask) for image, mask in zip(images, masks, strict=True)]

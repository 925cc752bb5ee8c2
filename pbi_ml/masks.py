"""Mask operations shared by the stages: dilation, feathering, location, region isolation."""

from __future__ import annotations

import numpy as np

from pbi_ml import reasons
from pbi_ml.errors import ItemError

LOCATION_GRID = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)


def dilate(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Dilate a HxW bool mask by `pixels` with an elliptical kernel."""
    if pixels <= 0:
        return mask.astype(bool).copy()
    import cv2

    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * pixels + 1, 2 * pixels + 1))
    return cv2.dilate(mask.astype(np.uint8), kernel) > 0


def hole_radius_px(mask: np.ndarray) -> float:
    """How far the middle of a hole lies from the pixels around it: the largest Euclidean distance
    from a True pixel to the nearest False pixel (the radius of the largest disc inside the mask).
    A classical inpainter propagates colour inwards from the hole's edge, so this is how far it has
    to carry it; half the hole's width. Pixels beyond the image border do not count as an edge."""
    import cv2

    padded = np.pad(mask.astype(np.uint8), 1, constant_values=1)
    return float(cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1].max(initial=0.0))


def feathered_alpha(mask: np.ndarray, dilated: np.ndarray, sigma: float) -> np.ndarray:
    """Blend weights in [0,1]: 1 on the object, a Gaussian ramp in the dilation ring, and exactly 0
    outside the dilated mask (so a blend leaves every outside pixel untouched)."""
    import cv2

    alpha = dilated.astype(np.float32)
    if sigma > 0:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigmaX=sigma, sigmaY=sigma)
    alpha[mask.astype(bool)] = 1.0
    alpha[~dilated.astype(bool)] = 0.0
    return np.clip(alpha, 0.0, 1.0)


def blend(original: np.ndarray, inpainted: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """alpha * inpainted + (1 - alpha) * original, in uint8; pixels with alpha == 0 are copied."""
    a = alpha[..., None].astype(np.float32)
    out = a * inpainted.astype(np.float32) + (1.0 - a) * original.astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    outside = alpha == 0
    out[outside] = original[outside]
    return out


def object_location(mask: np.ndarray) -> str:
    """The 3x3-grid cell ("top left" ... "bottom right") of the mask's centre of mass."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return "center"
    h, w = mask.shape
    col = min(int(3 * xs.mean() / w), 2)
    row = min(int(3 * ys.mean() / h), 2)
    return LOCATION_GRID[row][col]


def isolate_region(
    image: np.ndarray, mask: np.ndarray, dilation_px: int, blur_sigma: float, mean_colour: np.ndarray | None = None
) -> np.ndarray:
    """The paper's region isolation (docs/method.md#region-isolation): paste the masked area onto a
    background of the image's mean colour (`mean_colour`, computed when not given) through a dilated,
    Gaussian-blurred mask. Returns HxWx3 uint8."""
    import cv2

    soft = dilate(mask, dilation_px).astype(np.float32)
    if blur_sigma > 0:
        soft = cv2.GaussianBlur(soft, (0, 0), sigmaX=blur_sigma, sigmaY=blur_sigma)
    colour = image.reshape(-1, 3).mean(axis=0) if mean_colour is None else mean_colour
    background = np.broadcast_to(colour, image.shape).astype(np.float32)
    out = soft[..., None] * image.astype(np.float32) + (1 - soft[..., None]) * background
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def bbox_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the mask's nonzero pixels; (0, 0, 0, 0) for an empty mask."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return (0, 0, 0, 0)
    return (int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1))


def crop_box(
    bbox: tuple[float, float, float, float], shape: tuple[int, int], pad: float = 0.1
) -> tuple[int, int, int, int]:
    """A padded integer crop (x0, y0, x1, y1) around a bbox, clipped to the image."""
    x, y, w, h = bbox
    height, width = shape[:2]
    px, py = w * pad, h * pad
    x0, y0 = max(int(np.floor(x - px)), 0), max(int(np.floor(y - py)), 0)
    x1, y1 = min(int(np.ceil(x + w + px)), width), min(int(np.ceil(y + h + py)), height)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def check_image(image, what: str = "image") -> np.ndarray:
    """Validate one decoded image: HxWx3 uint8, not empty. Raises ItemError `bad_image`."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ItemError(reasons.BAD_IMAGE, f"{what}: expected HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
    return np.ascontiguousarray(image)


def check_image_and_mask(image, mask) -> tuple[np.ndarray, np.ndarray]:
    """THE image/mask validator every stage uses: HxWx3 uint8 image, HxW mask of the same size,
    not empty.

    Returns (contiguous image, bool mask). Raises ItemError with reason `bad_image`, `bad_mask`,
    `mask_size_mismatch` or `empty_mask`.
    """
    image = check_image(image)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ItemError(reasons.BAD_MASK, f"expected a HxW mask, got shape {mask.shape}")
    if mask.shape != image.shape[:2]:
        raise ItemError(reasons.MASK_SIZE_MISMATCH, f"mask {mask.shape} vs image {image.shape[:2]}")
    mask = mask.astype(bool)
    if not mask.any():
        raise ItemError(reasons.EMPTY_MASK, "the mask has no pixels")
    return image, mask


def load_image_and_mask(source, row: dict) -> tuple[np.ndarray, np.ndarray]:
    """An instance's original photo and decoded mask (from its index / candidates row), validated.
    Raises ItemError with the reason (image_missing, image_unreadable, path_escapes_root,
    invalid_mask, mask_missing, ... and those of `check_image_and_mask`)."""
    from pbi_ml.imageio import load_rgb
    from pbi_ml.sources import decode_mask

    image = load_rgb(source.images, row["image_file"])
    return check_image_and_mask(image, decode_mask(row, source))

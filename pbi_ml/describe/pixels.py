"""The embedded describer: what the pixels under the mask measurably look like, no weights.

It reports only what it measures and never claims to recognise anything beyond the class name it
is given:
- colours: every pixel under the (slightly eroded) mask is named in HSV space with one of 12 basic
  colour names; the one to three most frequent names are reported ("brown and white");
- size: the mask's area fraction of the photo (small < 3 % <= medium-sized < 20 % <= large);
- shape: "tall" or "wide" when the mask's box is at least twice as long one way;
- texture: "plain" or "textured" from the mean gradient magnitude inside the mask (omitted when in
  between).
Phrased as a noun phrase around the class name: "a large textured brown and white cat".
Deterministic: pure numpy arithmetic on the uint8 pixels.
"""

from __future__ import annotations

import numpy as np

from pbi_ml.describe.base import DescribeConfig, DescribeItem
from pbi_ml.instruct.grammar import clean_category, noun_phrase

COLOUR_NAMES = (
    "black",
    "white",
    "grey",
    "red",
    "orange",
    "yellow",
    "green",
    "blue",
    "purple",
    "pink",
    "brown",
    "beige",
)
SMALL_AREA_FRACTION = 0.03
LARGE_AREA_FRACTION = 0.20
ELONGATION_RATIO = 2.0
SECOND_COLOUR_MIN_FRACTION = 0.25  # a second colour is named when it covers at least this share
THIRD_COLOUR_MIN_FRACTION = 0.20
# Mean gradient magnitude (central differences on 0-255 luminance) inside the mask, with the
# object's box rescaled to TEXTURE_SCALE px. Thresholds set on scikit-image photos (see
# the measurements in tests/unit/test_describe.py): flat colour 0, sky ~2, rocket body ~3.6, cat fur ~10,
# coins ~14, gravel and grass ~20. In between, texture is not mentioned.
TEXTURE_SCALE = 128
PLAIN_MAX_GRADIENT = 4.0
TEXTURED_MIN_GRADIENT = 12.0


def hsv_of(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1] for an Nx3 uint8 array."""
    rgb = rgb.astype(np.float64) / 255.0
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    v = rgb.max(axis=1)
    c = v - rgb.min(axis=1)
    s = np.where(v > 0, c / np.maximum(v, 1e-12), 0.0)
    safe_c = np.maximum(c, 1e-12)
    h = np.where(
        v == r,
        ((g - b) / safe_c) % 6.0,
        np.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0),
    )
    h = np.where(c > 0, h * 60.0, 0.0) % 360.0
    return h, s, v


def colour_name_indices(rgb: np.ndarray) -> np.ndarray:
    """Index into COLOUR_NAMES for each pixel of an Nx3 uint8 array (rules in HSV space)."""
    h, s, v = hsv_of(rgb)
    idx = {name: i for i, name in enumerate(COLOUR_NAMES)}
    out = np.full(h.shape, idx["grey"], dtype=np.int64)
    achromatic = s < 0.18
    out[achromatic & (v >= 0.80)] = idx["white"]
    chroma = ~achromatic

    def put(cond, name):
        out[cond & chroma] = idx[name]

    red = (h < 15) | (h >= 345)
    orange = (h >= 15) & (h < 45)
    yellow = (h >= 45) & (h < 70)
    green = (h >= 70) & (h < 170)
    blue = (h >= 170) & (h < 260)
    purple = (h >= 260) & (h < 290)
    magenta = (h >= 290) & (h < 345)
    put(red, "red")
    put(red & (v >= 0.70) & (s < 0.45), "pink")
    put(red & (v < 0.45) & (s < 0.60), "brown")
    put(orange, "orange")
    put(orange & (v < 0.60), "brown")
    put(orange & (v >= 0.60) & (s < 0.45), "beige")
    put(orange & (v < 0.80) & (s < 0.45), "brown")
    put(yellow, "yellow")
    put(yellow & (v >= 0.60) & (s < 0.40), "beige")
    put(yellow & (v < 0.50), "brown")
    put(green, "green")
    put(blue, "blue")
    put(purple, "purple")
    put(magenta, "pink")
    put(magenta & (v < 0.60), "purple")
    out[v < 0.20] = idx["black"]
    return out


def dominant_colours(pixels: np.ndarray) -> list[str]:
    """The one to three most frequent colour names of an Nx3 uint8 array, most frequent first."""
    if len(pixels) == 0:
        return []
    counts = np.bincount(colour_name_indices(pixels), minlength=len(COLOUR_NAMES))
    fractions = counts / counts.sum()
    order = sorted(range(len(COLOUR_NAMES)), key=lambda i: (-counts[i], i))  # ties: fixed name order
    names = [COLOUR_NAMES[order[0]]]
    if fractions[order[1]] >= SECOND_COLOUR_MIN_FRACTION:
        names.append(COLOUR_NAMES[order[1]])
        if fractions[order[2]] >= THIRD_COLOUR_MIN_FRACTION:
            names.append(COLOUR_NAMES[order[2]])
    return names


def mean_gradient(image: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean luminance gradient magnitude (0-255 scale) over mask pixels whose 3x3 neighbourhood is
    inside the mask (so the object's outline does not count as texture), measured on the object's
    box rescaled to TEXTURE_SCALE px on its longer side (so the number does not depend on the
    photo's resolution). None if too few pixels."""
    import cv2

    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = TEXTURE_SCALE / max(y1 - y0, x1 - x0)
    size = (max(int(round((x1 - x0) * scale)), 1), max(int(round((y1 - y0) * scale)), 1))
    crop = np.ascontiguousarray(image[y0:y1, x0:x1])
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    crop = cv2.resize(crop, size, interpolation=interpolation)
    mask = cv2.resize(mask[y0:y1, x0:x1].astype(np.uint8), size, interpolation=cv2.INTER_NEAREST) > 0
    lum = crop.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    gx = np.zeros_like(lum)
    gy = np.zeros_like(lum)
    gx[:, 1:-1] = (lum[:, 2:] - lum[:, :-2]) / 2.0
    gy[1:-1, :] = (lum[2:, :] - lum[:-2, :]) / 2.0
    inner = mask.copy()
    inner[0, :] = inner[-1, :] = False
    inner[:, 0] = inner[:, -1] = False
    inner[1:-1, 1:-1] &= mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
    if inner.sum() < 16:
        return None
    return float(np.hypot(gx, gy)[inner].mean())


def _eroded(mask: np.ndarray, pixels: int) -> np.ndarray:
    out = mask.copy()
    for _ in range(pixels):
        shrunk = out.copy()
        shrunk[1:, :] &= out[:-1, :]
        shrunk[:-1, :] &= out[1:, :]
        shrunk[:, 1:] &= out[:, :-1]
        shrunk[:, :-1] &= out[:, 1:]
        out = shrunk
    return out


def pixel_attributes(image: np.ndarray, mask: np.ndarray) -> dict:
    """The measured attributes behind a description (also useful on their own)."""
    h, w = mask.shape
    area_fraction = float(mask.sum()) / float(h * w)
    ys, xs = np.nonzero(mask)
    box_w, box_h = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
    core = _eroded(mask, 2)
    colour_mask = core if core.sum() >= 20 else mask
    gradient = mean_gradient(image, mask)
    if area_fraction < SMALL_AREA_FRACTION:
        size = "small"
    elif area_fraction < LARGE_AREA_FRACTION:
        size = "medium-sized"
    else:
        size = "large"
    if box_h >= ELONGATION_RATIO * box_w:
        shape = "tall"
    elif box_w >= ELONGATION_RATIO * box_h:
        shape = "wide"
    else:
        shape = None
    if gradient is None:
        texture = None
    elif gradient <= PLAIN_MAX_GRADIENT:
        texture = "plain"
    elif gradient >= TEXTURED_MIN_GRADIENT:
        texture = "textured"
    else:
        texture = None
    return {
        "colours": dominant_colours(image[colour_mask]),
        "size": size,
        "shape": shape,
        "texture": texture,
        "area_fraction": area_fraction,
        "mean_gradient": gradient,
    }


def phrase_description(attributes: dict, category: str) -> str:
    """ "a large textured brown and white cat" from `pixel_attributes` and the class name."""
    colours = attributes["colours"]
    if len(colours) <= 1:
        colour = "".join(colours)
    else:
        colour = ", ".join(colours[:-1]) + " and " + colours[-1]
    words = [attributes["size"], attributes["shape"], attributes["texture"], colour, clean_category(category)]
    return noun_phrase(" ".join(w for w in words if w), category)


class PixelDescriber:
    """Embedded default describer: colour names, size, shape and texture measured under the mask."""

    name = "pixels"

    def __init__(self, config: DescribeConfig | None = None):
        self.config = config or DescribeConfig()

    def describe(self, items: list[DescribeItem]) -> list[str]:
        return [phrase_description(pixel_attributes(item.image, item.mask), item.category) for item in items]

"""Full-resolution masks for index rows, decoded only when a stage needs the pixels.

COCO / LVIS rows carry their segmentation as a compact JSON string (polygons, or an RLE with a
compressed counts string); Open Images rows carry the path of a mask PNG relative to the source's
`masks` root. `decode_mask` turns either into an HxW bool array at the image's annotated size.
A segmentation is checked again (checks.py) before pycocotools sees it: the row may have been
edited since the reader checked it.
"""

from __future__ import annotations

import json
import numbers
from typing import TYPE_CHECKING, TypeGuard

import numpy as np

from pbi_ml import reasons
from pbi_ml.errors import ItemError
from pbi_ml.sources.checks import (
    MAX_IMAGE_PIXELS,
    coco_mask,
    image_size_problem,
    is_file,
    polygon_arrays,
    polygons_are_numbers,
    rle_counts_from_string,
    rle_is_consistent,
    short_repr,
)

if TYPE_CHECKING:  # the readers take a SourceConfig; the config package imports the demo source
    from pbi_ml.config import SourceConfig

__all__ = ["decode_mask", "resolve_mask", "rle_counts_from_string", "rle_is_consistent"]


def decode_mask(row: dict, source: SourceConfig) -> np.ndarray:
    """The HxW bool mask of one index row (a dict from `table.to_pylist()`), H, W = row height, width.

    COCO / LVIS: polygons (one or several, merged), or RLE, through pycocotools.mask.
    Open Images: the mask PNG under `source.masks`, resized with nearest neighbour to the image
    size when it differs. Raises ItemError("invalid_mask") for a degenerate, malformed or empty
    mask and ItemError("mask_missing" / "mask_unreadable" / "path_escapes_root") for an Open
    Images file that cannot be read.
    """
    if source.format == "openimages":
        mask = _decode_openimages(row, source)
    else:
        mask = _decode_segmentation(row)
    if not mask.any():
        raise ItemError(reasons.EMPTY_MASK, f"annotation {row.get('annotation_id')}: the mask has no pixels")
    return mask


def _size_of(row: dict) -> tuple[int, int]:
    height, width = row.get("height"), row.get("width")
    if not _is_integer(height) or not _is_integer(width) or height <= 0 or width <= 0:
        raise ItemError(reasons.INVALID_MASK, f"annotation {row.get('annotation_id')}: unknown image size")
    return int(height), int(width)


def _is_integer(value) -> TypeGuard[int]:
    """An int or a numpy integer (rows may come from pandas), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _decode_segmentation(row: dict) -> np.ndarray:
    mask_utils = coco_mask()

    annotation = row.get("annotation_id")
    if row.get("index_error"):
        raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: {row['index_error']}")
    height, width = _size_of(row)
    problem = image_size_problem(height, width)
    if problem:
        raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: {problem}")
    text = row.get("segmentation")
    if not text or not isinstance(text, str):
        raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: no segmentation")
    try:
        segmentation = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, a too long integer, deep nesting
        raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: segmentation is not JSON ({exc})") from None

    if type(segmentation) is list:
        if not polygons_are_numbers(segmentation):
            raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: segmentation is not polygons of numbers")
        arrays, error = polygon_arrays(segmentation, height, width)
        if error == "degenerate_polygon":
            raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: no polygon with 3 or more points")
        if error:
            raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: {error}")
        rles = mask_utils.frPyObjects(arrays, height, width)
        rle = rles[0] if len(rles) == 1 else mask_utils.merge(rles)
    elif type(segmentation) is dict and "size" in segmentation and "counts" in segmentation:
        size, counts = segmentation["size"], segmentation["counts"]
        if type(size) is not list or any(type(v) is not int for v in size) or size != [height, width]:
            raise ItemError(
                reasons.INVALID_MASK, f"annotation {annotation}: RLE size {short_repr(size)} != image {[height, width]}"
            )
        if not rle_is_consistent(size, counts):
            raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: RLE runs do not cover {height}x{width}")
        if isinstance(counts, str):
            rle = {"size": [height, width], "counts": counts.encode("ascii")}
        else:
            rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        raise ItemError(reasons.INVALID_MASK, f"annotation {annotation}: segmentation is neither polygons nor RLE")
    return mask_utils.decode(rle).astype(bool)


def _decode_openimages(row: dict, source: SourceConfig) -> np.ndarray:
    from PIL import Image

    from pbi_ml.imageio import load_gray

    relative = row.get("mask_file")
    if not relative or not isinstance(relative, str):
        raise ItemError(reasons.MASK_MISSING, f"annotation {row.get('annotation_id')}: no mask file")
    path = resolve_mask(source.masks, relative)  # raises path_escapes_root / mask_missing
    try:
        gray = load_gray(path)  # raises mask_missing / mask_unreadable
    except Image.DecompressionBombError as exc:
        raise ItemError(reasons.MASK_UNREADABLE, f"{path}: {exc}") from None
    height, width = _size_of(row)
    if height * width > MAX_IMAGE_PIXELS:
        raise ItemError(reasons.INVALID_MASK, f"annotation {row.get('annotation_id')}: {width} x {height} is too large")
    if gray.shape != (height, width):
        gray = np.asarray(Image.fromarray(gray).resize((width, height), Image.Resampling.NEAREST))
    return gray > 127


def resolve_mask(root, relative: str):
    """The existing file `relative` names inside `root` (imageio.resolve_inside), else ItemError.

    path_escapes_root for a path leaving the root; mask_missing for no such file, and for a name
    no file can have (a NUL character, a name too long for the file system).
    """
    from pbi_ml.imageio import resolve_inside

    if "\x00" in relative:
        raise ItemError(reasons.MASK_MISSING, f"{short_repr(relative)}: a file name cannot contain NUL")
    path = resolve_inside(root, relative)  # raises path_escapes_root
    if not is_file(path):
        raise ItemError(reasons.MASK_MISSING, str(path))
    return path

"""Full-resolution masks for index rows, decoded only when a stage needs the pixels.

COCO / LVIS rows carry their segmentation as a compact JSON string (polygons, or an RLE with a
compressed counts string); Open Images rows carry the path of a mask PNG relative to the source's
`masks` root. `decode_mask` turns either into an HxW bool array at the image's annotated size.
"""

from __future__ import annotations

import json

import numpy as np

from pbi_ml.config import SourceConfig
from pbi_ml.errors import ItemError


def rle_counts_from_string(counts: str) -> list[int] | None:
    """Decode a COCO compressed-RLE counts string to run lengths; None when it is malformed.

    A port of pycocotools' rleFrString, used to validate an RLE (its runs must be non-negative
    and sum to h*w) before pycocotools decodes it: pycocotools writes past its buffer otherwise.
    """
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n:
                return None  # truncated run
            c = ord(counts[p]) - 48
            if c < 0 or c > 63:
                return None
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(runs) > 2:
            x += runs[-2]
        if x < 0 or x > 0xFFFFFFFF:
            return None
        runs.append(x)
    return runs


def rle_is_consistent(size: list[int], counts) -> bool:
    """True when an RLE's runs (list, or compressed string) cover exactly size[0] * size[1] pixels."""
    runs = rle_counts_from_string(counts) if isinstance(counts, str) else counts
    if runs is None:
        return False
    return sum(runs) == int(size[0]) * int(size[1])


def decode_mask(row: dict, source: SourceConfig) -> np.ndarray:
    """The HxW bool mask of one index row (a dict from `table.to_pylist()`), H, W = row height, width.

    COCO / LVIS: polygons (one or several, merged), or RLE, through pycocotools.mask.
    Open Images: the mask PNG under `source.masks`, resized with nearest neighbour to the image
    size when it differs. Raises ItemError("invalid_mask") for a degenerate or empty mask and
    ItemError("mask_missing" / "mask_unreadable") for an Open Images file that cannot be read.
    """
    if source.format == "openimages":
        mask = _decode_openimages(row, source)
    else:
        mask = _decode_segmentation(row)
    if not mask.any():
        raise ItemError("invalid_mask", f"annotation {row.get('annotation_id')}: empty mask")
    return mask


def _size_of(row: dict) -> tuple[int, int]:
    height, width = row.get("height"), row.get("width")
    if not height or not width or height <= 0 or width <= 0:
        raise ItemError("invalid_mask", f"annotation {row.get('annotation_id')}: unknown image size")
    return int(height), int(width)


def _decode_segmentation(row: dict) -> np.ndarray:
    import pycocotools.mask as mask_utils

    annotation = row.get("annotation_id")
    if row.get("index_error"):
        raise ItemError("invalid_mask", f"annotation {annotation}: {row['index_error']}")
    height, width = _size_of(row)
    text = row.get("segmentation")
    if not text:
        raise ItemError("invalid_mask", f"annotation {annotation}: no segmentation")
    try:
        segmentation = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ItemError("invalid_mask", f"annotation {annotation}: segmentation is not JSON ({exc})") from None

    if isinstance(segmentation, list):
        polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        if not polygons:
            raise ItemError("invalid_mask", f"annotation {annotation}: no polygon with 3 or more points")
        try:
            rles = mask_utils.frPyObjects([[float(v) for v in p] for p in polygons], height, width)
        except (TypeError, ValueError) as exc:
            raise ItemError("invalid_mask", f"annotation {annotation}: bad polygon ({exc})") from None
        rle = rles[0] if len(rles) == 1 else mask_utils.merge(rles)
    elif isinstance(segmentation, dict) and "size" in segmentation and "counts" in segmentation:
        size, counts = segmentation["size"], segmentation["counts"]
        if list(size) != [height, width]:
            raise ItemError("invalid_mask", f"annotation {annotation}: RLE size {size} != image {[height, width]}")
        if not rle_is_consistent(size, counts):
            raise ItemError("invalid_mask", f"annotation {annotation}: RLE runs do not cover {height}x{width}")
        if isinstance(counts, list):
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode("ascii")}
    else:
        raise ItemError("invalid_mask", f"annotation {annotation}: segmentation is neither polygons nor RLE")
    return mask_utils.decode(rle).astype(bool)


def _decode_openimages(row: dict, source: SourceConfig) -> np.ndarray:
    from PIL import Image

    from pbi_ml.imageio import load_gray, resolve_inside

    relative = row.get("mask_file")
    if not relative:
        raise ItemError("mask_missing", f"annotation {row.get('annotation_id')}: no mask file")
    path = resolve_inside(source.masks, relative)  # raises path_escapes_root
    gray = load_gray(path)  # raises mask_missing / mask_unreadable
    height, width = _size_of(row)
    if gray.shape != (height, width):
        gray = np.asarray(Image.fromarray(gray).resize((width, height), Image.NEAREST))
    return gray > 127

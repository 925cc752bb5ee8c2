"""Checks shared by the readers and `decode_mask`: what may be handed to pycocotools, and more.

pycocotools does not validate its input: a polygon with huge coordinates or outline makes it
allocate without bound or overflow a C int, an RLE whose runs do not cover its size makes it
write past its buffer. So every polygon and RLE is checked here first, by the reader when the
index is built (a bad one gets the row's `index_error`) and again by `decode_mask` for a row
that may have been edited since.

Also here: the limits on image sizes, the JSON nesting check run before ijson (whose memory
grows with the square of the nesting depth), `INDEX_ERRORS` (every `index_error` value) and
`short_repr` for error messages about values of any size.
"""

from __future__ import annotations

import json
import math
import re
import reprlib
from pathlib import Path
from typing import Any

import numpy as np

# every value the index's `index_error` column takes (null: the instance's mask is usable)
INDEX_ERRORS: dict[str, str] = {
    "empty_segmentation": "COCO / LVIS: the segmentation is null, [] or {}",
    "degenerate_polygon": "COCO / LVIS: no polygon has 3 or more points",
    "invalid_polygon": "COCO / LVIS: a polygon coordinate is not finite or lies more than one image size "
    "outside the image, or its outline is absurdly long",
    "invalid_rle": "COCO / LVIS: the RLE counts are malformed or do not cover its size",
    "segmentation_size_mismatch": "COCO / LVIS: the RLE size differs from the image's",
    "zero_area": "the mask covers no pixel",
    "mask_missing": "Open Images: no mask file at MaskPath (nor in its first-character sub-folder)",
    "mask_unreadable": "Open Images: the mask file does not decode",
    "path_escapes_root": "Open Images: MaskPath is absolute or resolves outside the masks root",
}

# pycocotools indexes a mask's pixels with a C int and scales polygon coordinates by 5 into one
MAX_IMAGE_PIXELS = 2**30
MAX_IMAGE_SIDE = 2**20
# a polygon point may lie at most one image size outside the image (COCO has points just outside)
# and its outline may be at most this many pixels long (pycocotools holds ~5 ints per outline pixel)
MAX_POLYGON_OUTLINE = 2**22
MAX_RLE_RUN = 0xFFFFFFFF  # pycocotools stores runs as uint32
_MAX_RLE_CHARS_PER_RUN = 7  # 35 bits: what pycocotools' rleToString writes for any uint32 difference

# a list of lists of JSON numbers, as json.dumps writes it (no NaN / Infinity, no booleans)
POLYGONS_TEXT = re.compile(r"\[\[[-+.0-9eE,]*\](?:,\[[-+.0-9eE,]*\])*\]")
compact_json = json.JSONEncoder(separators=(",", ":")).encode


def rle_counts_from_string(counts: str) -> list[int] | None:
    """Decode a COCO compressed-RLE counts string to run lengths; None when it is malformed.

    A port of pycocotools' rleFrString, used to validate an RLE (its runs must be non-negative
    and sum to h*w) before pycocotools decodes it: pycocotools writes past its buffer otherwise.
    A run longer than 7 characters is malformed (pycocotools never writes one, and would
    overflow its C long reading it).
    """
    runs: list[int] = []
    p, n = 0, len(counts)
    while p < n:
        x = k = 0
        more = True
        while more:
            if p >= n or k >= _MAX_RLE_CHARS_PER_RUN:
                return None  # truncated or overlong run
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
        if x < 0 or x > MAX_RLE_RUN:
            return None
        runs.append(x)
    return runs


def rle_is_consistent(size, counts) -> bool:
    """True when an RLE's runs (list, or compressed string) cover exactly size[0] * size[1] pixels.

    `size` must be [height, width] of positive integers and the runs integers in 0..2**32-1; any
    other value (a wrong type included) is not consistent.
    """
    if type(size) is not list or len(size) != 2 or any(type(v) is not int or v <= 0 for v in size):
        return False
    if type(counts) is str:
        runs = rle_counts_from_string(counts)
    elif type(counts) is list and all(type(v) is int and 0 <= v <= MAX_RLE_RUN for v in counts):
        runs = counts
    else:
        return False
    return runs is not None and sum(runs) == size[0] * size[1]


def polygons_are_numbers(polygons) -> bool:
    """True when `polygons` is a list of lists of JSON numbers (no booleans, strings, NaN or infinities)."""
    try:
        return POLYGONS_TEXT.fullmatch(compact_json(polygons)) is not None
    except (ValueError, RecursionError):
        return False


def polygon_arrays(polygons: list[list], height: int, width: int) -> tuple[list[np.ndarray], str | None]:
    """The polygons pycocotools may rasterise for an image of height x width, or why there are none.

    `polygons` is a list of lists of numbers (see `polygons_are_numbers`). Returns (arrays, None),
    or ([], "degenerate_polygon") when no polygon has 3 or more points (polygons with fewer points
    or an odd number of coordinates are dropped), or ([], "invalid_polygon") when a coordinate is
    not finite, lies more than one image size outside the image, or a polygon's outline is longer
    than MAX_POLYGON_OUTLINE pixels.
    """
    arrays = []
    for polygon in polygons:
        if len(polygon) < 6 or len(polygon) % 2:
            continue
        try:
            finite = all(map(math.isfinite, polygon))
        except OverflowError:  # an integer too large for a float
            finite = False
        if not finite:
            return [], "invalid_polygon"
        xs, ys = polygon[0::2], polygon[1::2]
        x_min, x_max, y_min, y_max = min(xs), max(xs), min(ys), max(ys)
        if x_min < -width or x_max > 2 * width or y_min < -height or y_max > 2 * height:
            return [], "invalid_polygon"
        xy = np.asarray(polygon, dtype=np.float64)
        if len(xs) * max(x_max - x_min, y_max - y_min) > MAX_POLYGON_OUTLINE:
            edges = np.abs(xy - np.roll(xy, 2)).reshape(-1, 2).max(axis=1)  # each edge's longer side
            if edges.sum() > MAX_POLYGON_OUTLINE:
                return [], "invalid_polygon"
        arrays.append(xy)
    if not arrays:
        return [], "degenerate_polygon"
    return arrays, None


def image_size_problem(height: int, width: int) -> str | None:
    """Why pycocotools cannot handle a mask of this size, or None."""
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE or height * width > MAX_IMAGE_PIXELS:
        return (
            f"{short_repr(width)} x {short_repr(height)} pixels is more than pycocotools can handle "
            f"(sides up to {MAX_IMAGE_SIDE}, at most {MAX_IMAGE_PIXELS} pixels)"
        )
    return None


MAX_JSON_DEPTH = 64  # COCO / LVIS need 5 (object, annotations, annotation, segmentation, polygon)
_JSON_SCAN_BYTES = 1 << 23
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_JSON_DEPTH_STEP = np.zeros(256, dtype=np.int8)
_JSON_DEPTH_STEP[[ord("["), ord("{")]] = 1
_JSON_DEPTH_STEP[[ord("]"), ord("}")]] = -1


def json_nesting_problem(path: Path, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """Why a JSON file nests too deeply, or None; a streaming byte scan, no parsing.

    Brackets inside strings do not count. Only the depth is looked at: a file that is not JSON
    passes here and fails in the parser.
    """
    depth = 0
    consumed = 0
    carry = b""  # the start of a string that continues in the next block
    with open(path, "rb") as f:
        while True:
            block = f.read(_JSON_SCAN_BYTES)
            data = carry + block
            outside = _JSON_STRING.sub(b"", data)
            open_quote = outside.find(b'"')
            carry = b""
            if open_quote >= 0:  # an unterminated string: the rest of `data` is inside it
                if block:
                    carry = data[len(data) - (len(outside) - open_quote) :]
                outside = outside[:open_quote]
            if outside:
                steps = _JSON_DEPTH_STEP[np.frombuffer(outside, dtype=np.uint8)]
                running = np.cumsum(steps, dtype=np.int64) + depth
                deepest = int(running.max())
                if deepest > max_depth:
                    return f"JSON nested more than {max_depth} levels deep (within the first {consumed + len(block)} bytes)"
                depth = int(running[-1])
            consumed += len(block)
            if not block:
                return None


def coco_mask() -> Any:
    """pycocotools.mask, imported on first use; untyped, as its stubs do not describe the polygon
    (list of arrays) and RLE (dict with a list or bytes counts) inputs it takes."""
    import pycocotools.mask

    return pycocotools.mask


def is_file(path: Path) -> bool:
    """Path.is_file, False (not an OSError) for a name the file system refuses (too long, NUL, ...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = 6


def short_repr(value) -> str:
    """repr() for error messages: at most ~100 characters, whatever the value's size or nesting."""
    try:
        return _REPR.repr(value)
    except (ValueError, RecursionError):  # an int with more digits than Python prints, ...
        return f"<{type(value).__name__}>"

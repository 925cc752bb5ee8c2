"""COCO instances JSON -> the normalised instance index.

The file is streamed with ijson, one top-level list per pass (categories, images, annotations),
so memory stays near the size of the compact index, not of the parsed JSON. Per annotation:

- polygons (one or several per instance) are kept as given (as a compact JSON string); polygons
  with fewer than 3 points are dropped from the instance;
- uncompressed RLE (counts list) is converted to compressed RLE; compressed RLE is kept;
- area and bbox come from pycocotools' RLE operations (frPyObjects, merge, area, toBbox) - no
  mask is ever decoded here;
- an instance whose mask is unusable stays in the index with area 0 and `index_error` set:
  "empty_segmentation", "degenerate_polygon", "invalid_polygon", "zero_area", "invalid_rle",
  "segmentation_size_mismatch" (checks.INDEX_ERRORS says what each means). Polygons and RLEs
  are checked (checks.py) before pycocotools sees them: it does not validate its input.

The `bbox` and `area` fields of the file are ignored (they are recomputed). Image paths are
stored as given; the candidate stage checks that they stay inside the images root. A file that
is not valid JSON (or not UTF-8), nests deeper than checks.MAX_JSON_DEPTH, lacks a top-level
list, has values of the wrong type (a segmentation that is not polygons of numbers nor an RLE,
an id that is not an integer or a string, ...), an image larger than pycocotools can handle or a
file name with a NUL character, or has an annotation pointing at an unknown image or category
raises AnnotationFileError naming the file and the problem.

LVIS (lvis.py) reuses `read_coco_like_file` with its own category and image parsers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ijson
import pyarrow as pa

from pbi_ml.errors import AnnotationFileError
from pbi_ml.sources.checks import (
    POLYGONS_TEXT,
    coco_mask,
    compact_json,
    image_size_problem,
    json_nesting_problem,
    polygon_arrays,
    rle_is_consistent,
    short_repr,
)
from pbi_ml.sources.index import IndexBuilder

if TYPE_CHECKING:  # the readers take a SourceConfig; the config package imports the demo source
    from pbi_ml.config import SourceConfig

_EXACT_ERROR_LOCATION_MAX_BYTES = 64 * 2**20


@dataclass(frozen=True, slots=True)
class CategoryInfo:
    name: str  # human-readable
    category_id: str
    synonyms: list[str]
    frequency: str | None = None


@dataclass(frozen=True, slots=True)
class ImageInfo:
    file_name: str
    width: int
    height: int
    not_exhaustive: frozenset | None = None  # LVIS: raw category ids not exhaustively annotated


CategoryParser = Callable[[dict, Path, int], tuple[Any, CategoryInfo]]
ImageParser = Callable[[dict, Path, int], tuple[Any, ImageInfo]]


def read_coco_index(source: SourceConfig, num_shards: int) -> pa.Table:
    """The INDEX_SCHEMA table of a COCO-format source (one or several instances JSON files)."""
    builder = IndexBuilder(source.name, num_shards)
    for path in source.annotation_files:
        read_coco_like_file(Path(path), builder, parse_coco_category, parse_coco_image)
    return builder.finish(", ".join(source.annotation_files))


# --------------------------------------------------------------------------------------------
# COCO categories and images


def parse_coco_category(raw: dict, path: Path, position: int) -> tuple[Any, CategoryInfo]:
    key = require_id(raw, "id", path, f"categories[{position}]")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AnnotationFileError(
            path, f"categories[{position}] (id {short_repr(key)}): 'name' missing or not a string"
        )
    return key, CategoryInfo(name=name, category_id=str(key), synonyms=[name])


def parse_coco_image(raw: dict, path: Path, position: int) -> tuple[Any, ImageInfo]:
    key = require_id(raw, "id", path, f"images[{position}]")
    where = f"images[{position}] (id {short_repr(key)})"
    file_name = raw.get("file_name")
    if not isinstance(file_name, str) or not file_name:
        raise AnnotationFileError(path, f"{where}: 'file_name' missing or not a string")
    require_file_name(file_name, path, where)
    width, height = require_size(raw, path, where)
    return key, ImageInfo(file_name=file_name, width=width, height=height)


def require_id(raw: dict, field: str, path: Path, where: str):
    value = raw.get(field)
    if type(value) is int or (type(value) is str and value):
        return value
    if value is None:
        raise AnnotationFileError(path, f"{where}: '{field}' is missing")
    raise AnnotationFileError(path, f"{where}: '{field}' must be an integer or a string, got {short_repr(value)}")


def require_size(raw: dict, path: Path, where: str) -> tuple[int, int]:
    size = []
    for field in ("width", "height"):
        value = raw.get(field)
        if type(value) is float and value.is_integer():
            value = int(value)
        if type(value) is not int or value <= 0:
            raise AnnotationFileError(path, f"{where}: '{field}' must be a positive integer, got {short_repr(value)}")
        size.append(value)
    problem = image_size_problem(size[1], size[0])
    if problem:
        raise AnnotationFileError(path, f"{where}: {problem}")
    return size[0], size[1]


def require_file_name(file_name: str, path: Path, where: str) -> None:
    if "\x00" in file_name:
        raise AnnotationFileError(path, f"{where}: file name {short_repr(file_name)} contains a NUL character")


# --------------------------------------------------------------------------------------------
# the streaming reader shared by COCO and LVIS


def read_coco_like_file(
    path: Path,
    builder: IndexBuilder,
    parse_category: CategoryParser,
    parse_image: ImageParser,
) -> None:
    """Stream one COCO-like JSON file into `builder` (three passes: categories, images, annotations)."""
    if not path.is_file():
        raise AnnotationFileError(path, "annotation file not found")
    try:
        problem = json_nesting_problem(path)  # ijson's memory grows with the square of the depth
        with open(path, "rb") as f:
            if f.read(3) == b"\xef\xbb\xbf":
                problem = "invalid JSON: the file starts with a UTF-8 byte order mark (save it without one)"
    except OSError as exc:
        raise AnnotationFileError(path, f"cannot read annotation file: {exc.strerror or exc}") from None
    if problem:
        raise AnnotationFileError(path, problem)

    categories: dict[Any, CategoryInfo] = _read_keyed_section(path, "categories", "category", parse_category)
    images: dict[Any, ImageInfo] = _read_keyed_section(path, "images", "image", parse_image)

    count = 0
    for position, ann in enumerate(iter_json_items(path, "annotations.item")):
        count += 1
        if type(ann) is not dict:
            raise AnnotationFileError(path, f"annotations[{position}] must be an object, got {_kind(ann)}")
        ann_id = require_id(ann, "id", path, f"annotations[{position}]")
        where = f"annotation {short_repr(ann_id)}"
        # ids are integers or strings: 1.0 or true would find image 1 (equal hashes) under another id
        image_key = require_id(ann, "image_id", path, where)
        image = images.get(image_key)
        if image is None:
            raise AnnotationFileError(path, f"{where} references unknown image_id {short_repr(image_key)}")
        category_key = require_id(ann, "category_id", path, where)
        category = categories.get(category_key)
        if category is None:
            raise AnnotationFileError(path, f"{where} references unknown category_id {short_repr(category_key)}")
        iscrowd = ann.get("iscrowd", 0)
        if type(iscrowd) not in (int, bool) or iscrowd not in (0, 1):
            raise AnnotationFileError(path, f"{where}: 'iscrowd' must be 0 or 1, got {short_repr(iscrowd)}")
        try:
            text, rle, error = summarise_segmentation(ann.get("segmentation"), image.height, image.width)
        except ValueError as exc:
            raise AnnotationFileError(path, f"{where}: {exc}") from None
        not_exhaustive = False if image.not_exhaustive is None else category_key in image.not_exhaustive
        builder.add(
            image_id=image_key,
            annotation_id=ann_id,
            category=category.name,
            category_id=category.category_id,
            category_frequency=category.frequency,
            category_synonyms=category.synonyms,
            category_not_exhaustive=not_exhaustive,
            image_file=image.file_name,
            width=image.width,
            height=image.height,
            rle=rle,
            area=None if rle is not None else 0.0,
            iscrowd=bool(iscrowd),
            segmentation=text,
            index_error=error,
        )
    if count == 0:
        require_top_level_list(path, "annotations")


def summarise_segmentation(segmentation, height: int, width: int) -> tuple[str | None, Any, str | None]:
    """(compact JSON text, RLE for area/bbox or None, index_error or None) of one segmentation.

    Raises ValueError when the value has the wrong type (a malformed file, not a bad mask).
    """
    if segmentation is None or (isinstance(segmentation, (list, dict)) and not segmentation):
        text = None if segmentation is None else json.dumps(segmentation)
        return text, None, "empty_segmentation"
    if type(segmentation) is list:
        return _summarise_polygons(segmentation, height, width)
    if type(segmentation) is dict:
        return _summarise_rle(segmentation, height, width)
    raise ValueError(f"'segmentation' must be a list of polygons or an RLE object, got {_kind(segmentation)}")


def _summarise_polygons(polygons: list, height: int, width: int) -> tuple[str, Any, str | None]:
    mask_utils = coco_mask()

    text = compact_json(polygons)
    if not POLYGONS_TEXT.fullmatch(text):
        raise ValueError("'segmentation' must be a list of polygons [[x1, y1, x2, y2, ...], ...] of numbers")
    arrays, error = polygon_arrays(polygons, height, width)
    if error:
        return text, None, error
    if len(arrays) != len(polygons):  # polygons with fewer than 3 points dropped
        text = compact_json([p for p in polygons if len(p) >= 6 and len(p) % 2 == 0])
    rles = mask_utils.frPyObjects(arrays, height, width)
    return text, (rles[0] if len(rles) == 1 else mask_utils.merge(rles)), None


def _summarise_rle(segmentation: dict, height: int, width: int) -> tuple[str, Any, str | None]:
    mask_utils = coco_mask()

    size, counts = segmentation.get("size"), segmentation.get("counts")
    if type(size) is not list or len(size) != 2 or any(type(v) is not int or v <= 0 for v in size):
        raise ValueError(f"RLE 'size' must be [height, width] of positive integers, got {short_repr(size)}")
    if type(counts) is list:
        if any(type(v) is not int or v < 0 for v in counts):
            raise ValueError("uncompressed RLE 'counts' must be non-negative integers")
    elif type(counts) is not str:
        raise ValueError(f"RLE 'counts' must be a list of integers or a string, got {_kind(counts)}")
    # a bad RLE keeps its text as given and never reaches pycocotools (it would write past its buffer)
    if size != [height, width]:
        return compact_json(segmentation), None, "segmentation_size_mismatch"
    if not rle_is_consistent(size, counts):
        return compact_json(segmentation), None, "invalid_rle"
    if isinstance(counts, str):
        compressed = counts
        rle = {"size": size, "counts": counts.encode("ascii")}
    else:
        rle = mask_utils.frPyObjects({"size": size, "counts": counts}, height, width)
        compressed = rle["counts"].decode("ascii")
    return compact_json({"size": size, "counts": compressed}), rle, None


# --------------------------------------------------------------------------------------------
# streaming JSON with useful errors


def iter_json_items(path: Path, prefix: str) -> Iterator[Any]:
    """ijson items under `prefix`; invalid JSON becomes AnnotationFileError saying where."""
    with open(path, "rb") as f:
        try:
            yield from ijson.items(f, prefix, use_float=True)
        except (ijson.JSONError, UnicodeDecodeError) as exc:  # ijson raises the latter for a bad \u escape
            raise AnnotationFileError(path, f"invalid JSON {_json_error_location(path, f, exc)}") from None


def _json_error_location(path: Path, f, exc: Exception) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else "parse error"
    context = " ".join(lines[1:]).strip()
    if os.path.getsize(path) <= _EXACT_ERROR_LOCATION_MAX_BYTES:
        try:
            json.loads(path.read_bytes())
        except json.JSONDecodeError as err:
            return f"at line {err.lineno} column {err.colno} (char {err.pos}): {err.msg} [{message}]"
        except (UnicodeDecodeError, ValueError) as err:
            return f"({err}) [{message}]"
    try:
        offset = f.tell()
    except (OSError, ValueError):
        offset = None
    where = f"within the first {offset} bytes" if offset is not None else ""
    return f"{where}: {message}" + (f" near: {context}" if context else "")


def require_top_level_list(path: Path, key: str) -> None:
    """Called when a pass found no items: the key must still exist and hold a (possibly empty) list."""
    kinds = _top_level_kinds(path)
    if kinds is None:
        raise AnnotationFileError(
            path, "the top level must be a JSON object with 'images', 'annotations' and 'categories'"
        )
    if key not in kinds:
        raise AnnotationFileError(path, f"missing top-level key {key!r} (found: {short_repr(sorted(kinds))})")
    if kinds[key] != "start_array":
        raise AnnotationFileError(
            path, f"top-level {key!r} must be a list, got {_EVENT_KINDS.get(kinds[key], kinds[key])}"
        )


_EVENT_KINDS = {
    "start_map": "an object",
    "start_array": "a list",
    "string": "a string",
    "number": "a number",
    "boolean": "a boolean",
    "null": "null",
}


def _top_level_kinds(path: Path) -> dict[str, str] | None:
    """{top-level key: first ijson event of its value}, or None if the top level is not an object."""
    kinds: dict[str, str] = {}
    pending = None
    with open(path, "rb") as f:
        try:
            events = ijson.parse(f, use_float=True)
            first = next(events, None)
            if first is None or first[1] != "start_map":
                return None
            for prefix, event, value in events:
                if pending is not None and prefix == pending:
                    kinds.setdefault(pending, event)
                    pending = None
                elif prefix == "" and event == "map_key":
                    pending = value
        except (ijson.JSONError, UnicodeDecodeError) as exc:
            raise AnnotationFileError(path, f"invalid JSON {_json_error_location(path, f, exc)}") from None
    return kinds


def _read_keyed_section(path: Path, section: str, what: str, parse) -> dict:
    """One pass over `section` (a top-level list of objects), parsed into {id: info}; ids unique."""
    items: dict = {}
    for position, raw in enumerate(iter_json_items(path, f"{section}.item")):
        if type(raw) is not dict:
            raise AnnotationFileError(path, f"{section}[{position}] must be an object, got {_kind(raw)}")
        key, info = parse(raw, path, position)
        if key in items:
            raise AnnotationFileError(path, f"{what} id {short_repr(key)} appears twice")
        items[key] = info
    if not items:
        require_top_level_list(path, section)
    return items


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )

"""LVIS v1 JSON -> the normalised instance index.

LVIS is COCO-like (same streaming reader, same segmentation handling, see coco.py) plus:

- categories carry `frequency` ("r" / "c" / "f") and `synonyms` -> `category_frequency`,
  `category_synonyms` (as given). LVIS names such as "baseball_bat" become the human-readable
  `category` "baseball bat" (underscores to spaces; the raw name stays the first synonym in LVIS).
- images carry `not_exhaustive_category_ids`: an instance whose class is in its image's list gets
  `category_not_exhaustive` = True (other instances of that class may be unannotated there).
  `neg_category_ids` is validated but has no per-instance column (it lists absent classes).
- LVIS v1 images have no `file_name`, only `coco_url`
  ("http://images.cocodataset.org/val2017/000000266409.jpg"). The file name is then the last two
  parts of that URL ("val2017/000000266409.jpg"), so the source's `images:` must point at the COCO
  root that holds train2017/ and val2017/. When `file_name` is present it is used as given.
- LVIS has no `iscrowd`: every instance is a single object.

LVIS annotates COCO images; images missing on disk are not the reader's business (no image is
read here): the candidate stage rejects their instances as image_missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import pyarrow as pa

from pbi_ml.errors import AnnotationFileError
from pbi_ml.sources.checks import short_repr
from pbi_ml.sources.coco import (
    CategoryInfo,
    ImageInfo,
    read_coco_like_file,
    require_file_name,
    require_id,
    require_size,
)
from pbi_ml.sources.index import IndexBuilder

if TYPE_CHECKING:  # the readers take a SourceConfig; the config package imports the demo source
    from pbi_ml.config import SourceConfig

LVIS_FREQUENCIES = ("r", "c", "f")


def read_lvis_index(source: SourceConfig, num_shards: int) -> pa.Table:
    """The INDEX_SCHEMA table of an LVIS v1 source (one or several JSON files, e.g. train + val)."""
    builder = IndexBuilder(source.name, num_shards)
    for path in source.annotation_files:
        read_coco_like_file(Path(path), builder, parse_lvis_category, parse_lvis_image)
    return builder.finish(", ".join(source.annotation_files))


def readable_name(lvis_name: str) -> str:
    """ "baseball_bat" -> "baseball bat"."""
    return " ".join(lvis_name.replace("_", " ").split())


def parse_lvis_category(raw: dict, path: Path, position: int) -> tuple[Any, CategoryInfo]:
    key = require_id(raw, "id", path, f"categories[{position}]")
    where = f"categories[{position}] (id {short_repr(key)})"
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise AnnotationFileError(path, f"{where}: 'name' missing or not a string")
    frequency = raw.get("frequency")
    if frequency is not None and frequency not in LVIS_FREQUENCIES:
        raise AnnotationFileError(
            path, f"{where}: 'frequency' must be one of {LVIS_FREQUENCIES}, got {short_repr(frequency)}"
        )
    synonyms = raw.get("synonyms")
    if synonyms is None:
        synonyms = [name]
    elif type(synonyms) is not list or not all(isinstance(s, str) for s in synonyms):
        raise AnnotationFileError(path, f"{where}: 'synonyms' must be a list of strings")
    return key, CategoryInfo(
        name=readable_name(name), category_id=str(key), synonyms=list(synonyms), frequency=frequency
    )


def parse_lvis_image(raw: dict, path: Path, position: int) -> tuple[Any, ImageInfo]:
    key = require_id(raw, "id", path, f"images[{position}]")
    where = f"images[{position}] (id {short_repr(key)})"
    width, height = require_size(raw, path, where)
    file_name = raw.get("file_name")
    if file_name is None:
        file_name = file_name_from_coco_url(raw.get("coco_url"))
        if file_name is None:
            raise AnnotationFileError(
                path, f"{where}: neither 'file_name' nor a usable 'coco_url' ({short_repr(raw.get('coco_url'))})"
            )
    elif not isinstance(file_name, str) or not file_name:
        raise AnnotationFileError(path, f"{where}: 'file_name' must be a non-empty string")
    require_file_name(file_name, path, where)
    for field in ("neg_category_ids", "not_exhaustive_category_ids"):
        ids = raw.get(field, [])
        if type(ids) is not list or not all(type(i) in (int, str) for i in ids):
            raise AnnotationFileError(path, f"{where}: {field!r} must be a list of category ids")
    not_exhaustive = frozenset(raw.get("not_exhaustive_category_ids", []))
    return key, ImageInfo(file_name=file_name, width=width, height=height, not_exhaustive=not_exhaustive)


def file_name_from_coco_url(url) -> str | None:
    """ "http://images.cocodataset.org/val2017/000000266409.jpg" -> "val2017/000000266409.jpg"."""
    if not isinstance(url, str) or not url:
        return None
    try:
        parts = [p for p in urlparse(url).path.split("/") if p]
    except ValueError:  # "http://[abc/x.jpg": an invalid IPv6 host
        return None
    if not parts:
        return None
    return "/".join(parts[-2:])

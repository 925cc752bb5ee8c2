"""Open Images v7 instance segmentations -> the normalised instance index.

Inputs (SourceConfig):

- `annotations`: one or more segmentation CSVs with the columns
  `MaskPath, ImageID, LabelName, BoxID, BoxXMin, BoxXMax, BoxYMin, BoxYMax[, PredictedIoU, Clicks]`
  (boxes normalised to 0..1);
- `masks`: the folder of mask PNGs. A mask is looked up as `<masks>/<MaskPath>` and, as the
  official zips extract (train-masks-0.zip ... -f.zip), `<masks>/<MaskPath[0]>/<MaskPath>`;
- `class_descriptions`: `LabelName,DisplayName` rows, header optional;
- `images`: the photos, `<images>/<ImageID>.jpg`.

Per row: `annotation_id` = MaskPath without ".png", `category` = DisplayName, `category_id` =
LabelName, `mask_file` = the mask's path relative to `masks`, `segmentation` = null. The CSV has
no image size, so width/height come from the image header when the image is readable, else from
the mask PNG. Each mask PNG is opened once (PIL) to get its pixel count and box, scaled to the
image size (Open Images masks may be stored at another resolution than the photo). A missing or
unreadable mask keeps its row with area 0, the CSV box (when the image size is known) and
index_error "mask_missing" / "mask_unreadable"; a MaskPath leaving the masks root (absolute,
`..`) gives "path_escapes_root" and is never opened; an empty mask gives "zero_area".
A CSV that does not parse, lacks a column, has an empty or NUL-containing MaskPath / ImageID /
LabelName, a box value that is not a finite number, or a LabelName missing from the class
descriptions raises AnnotationFileError naming the file and the line.
`category_not_exhaustive` is null (Open Images gives no such flag), `iscrowd` False.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from pbi_ml import reasons
from pbi_ml.errors import AnnotationFileError, ItemError
from pbi_ml.imageio import check_image, load_gray
from pbi_ml.sources.checks import short_repr
from pbi_ml.sources.decode import resolve_mask
from pbi_ml.sources.index import IndexBuilder

if TYPE_CHECKING:  # the readers take a SourceConfig; the config package imports the demo source
    from pbi_ml.config import SourceConfig

REQUIRED_COLUMNS = ("MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")
_BOX_COLUMNS = ("BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax")


def read_openimages_index(source: SourceConfig, num_shards: int) -> pa.Table:
    """The INDEX_SCHEMA table of an Open Images segmentation source."""
    if not source.class_descriptions or not source.masks:  # SourceConfig requires both for Open Images
        raise ValueError(f"source {source.name!r}: openimages needs 'masks' and 'class_descriptions'")
    classes = read_class_descriptions(Path(source.class_descriptions))
    builder = IndexBuilder(source.name, num_shards)
    image_sizes: dict[str, tuple[int, int] | None] = {}
    for path in source.annotation_files:
        _read_segmentation_csv(Path(path), source, classes, builder, image_sizes)
    return builder.finish(", ".join(source.annotation_files))


def read_class_descriptions(path: Path) -> dict[str, str]:
    """LabelName -> DisplayName from a class-descriptions CSV (header row optional)."""
    if not path.is_file():
        raise AnnotationFileError(path, "class descriptions file not found")
    classes: dict[str, str] = {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            for line_number, row in enumerate(csv.reader(f), start=1):
                if not row or all(not cell.strip() for cell in row):
                    continue
                if line_number == 1 and [c.strip() for c in row] == ["LabelName", "DisplayName"]:
                    continue
                if len(row) != 2 or not row[0].strip():
                    raise AnnotationFileError(
                        path, f"line {line_number}: expected 'LabelName,DisplayName', got {short_repr(row)}"
                    )
                label, name = row[0].strip(), row[1].strip()
                if label in classes and classes[label] != name:
                    raise AnnotationFileError(
                        path, f"line {line_number}: LabelName {short_repr(label)} described twice"
                    )
                classes[label] = name
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise AnnotationFileError(path, f"not a readable CSV: {str(exc)[:300]}") from None
    if not classes:
        raise AnnotationFileError(path, "no classes in the class descriptions file")
    return classes


def _read_csv_columns(path: Path) -> dict[str, list]:
    if not path.is_file():
        raise AnnotationFileError(path, "annotation file not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise AnnotationFileError(path, f"not a readable CSV: {str(exc)[:300]}") from None
    if not header:
        raise AnnotationFileError(path, "empty file: expected a header with " + ", ".join(REQUIRED_COLUMNS))
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise AnnotationFileError(path, f"missing required columns {missing}; found {short_repr(header)}")
    types: dict[str, pa.DataType] = {c: pa.string() for c in REQUIRED_COLUMNS}
    types.update({c: pa.float64() for c in _BOX_COLUMNS})
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
            convert_options=pacsv.ConvertOptions(include_columns=list(REQUIRED_COLUMNS), column_types=types),
        )
    except pa.ArrowException as exc:
        raise AnnotationFileError(path, f"malformed CSV: {str(exc)[:300]}") from None
    return {name: table.column(name).to_pylist() for name in REQUIRED_COLUMNS}


def _read_segmentation_csv(path, source, classes, builder, image_sizes) -> None:
    columns = _read_csv_columns(path)
    masks_root = Path(source.masks or "").resolve()
    for row_number, (mask_path, image_id, label, x0, x1, y0, y1) in enumerate(
        zip(
            columns["MaskPath"],
            columns["ImageID"],
            columns["LabelName"],
            columns["BoxXMin"],
            columns["BoxXMax"],
            columns["BoxYMin"],
            columns["BoxYMax"],
            strict=True,
        ),
        start=2,
    ):
        if not mask_path or not image_id or not label:
            raise AnnotationFileError(path, f"line {row_number}: MaskPath, ImageID and LabelName must be non-empty")
        if "\x00" in mask_path or "\x00" in image_id:  # no file can have that name
            raise AnnotationFileError(path, f"line {row_number}: MaskPath or ImageID contains a NUL character")
        for column, value in zip(_BOX_COLUMNS, (x0, x1, y0, y1), strict=True):
            if value is not None and not math.isfinite(value):
                raise AnnotationFileError(path, f"line {row_number}: {column} is {value}, not a finite number")
        name = classes.get(label)
        if name is None:
            raise AnnotationFileError(
                path, f"line {row_number}: LabelName {short_repr(label)} is not in the class descriptions"
            )
        image_file = f"{image_id}.jpg"
        if image_id not in image_sizes:
            try:
                image_sizes[image_id] = check_image(source.images, image_file)
            except (ItemError, OSError):  # OSError: a name the file system refuses (too long)
                image_sizes[image_id] = None
        image_size = image_sizes[image_id]

        mask_file, error = mask_path, None
        area, bbox, size = 0.0, None, image_size
        try:
            mask_file, mask_abs = find_mask(masks_root, mask_path)
            mask = _load_mask(mask_abs) > 127  # PIL opens each mask once
            area, bbox, size = _mask_summary(mask, image_size)
            if area == 0:
                error = "zero_area"
        except ItemError as exc:
            error = exc.reason
            if image_size is not None and None not in (x0, x1, y0, y1):
                w, h = image_size
                bbox = (x0 * w, y0 * h, (x1 - x0) * w, (y1 - y0) * h)
        builder.add(
            image_id=image_id,
            annotation_id=mask_path[:-4] if mask_path.lower().endswith(".png") else mask_path,
            category=name,
            category_id=label,
            category_synonyms=[name],
            category_not_exhaustive=None,
            image_file=image_file,
            width=size[0] if size else None,
            height=size[1] if size else None,
            bbox=bbox,
            area=area,
            iscrowd=False,
            segmentation=None,
            mask_file=mask_file,
            index_error=error,
        )


def find_mask(masks_root: Path, mask_path: str) -> tuple[str, Path]:
    """(path relative to the masks root, absolute path) of a MaskPath; ItemError when absent."""
    candidates = [mask_path]
    name = os.path.basename(mask_path)
    if name:
        candidates.append(f"{name[0]}/{mask_path}")
    for relative in candidates:
        try:
            return relative, resolve_mask(masks_root, relative)  # raises path_escapes_root
        except ItemError as exc:
            if exc.reason != reasons.MASK_MISSING:
                raise
    raise ItemError(reasons.MASK_MISSING, f"{short_repr(mask_path)} not under {masks_root}")


def _load_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        return load_gray(path)  # raises mask_missing / mask_unreadable
    except Image.DecompressionBombError as exc:  # a header claiming a huge size
        raise ItemError(reasons.MASK_UNREADABLE, f"{path}: {exc}") from None


def _mask_summary(mask: np.ndarray, image_size: tuple[int, int] | None):
    """(area, bbox, (width, height)) of a bool mask, scaled to the image size when known."""
    mask_h, mask_w = mask.shape
    width, height = image_size if image_size is not None else (mask_w, mask_h)
    sx, sy = width / mask_w, height / mask_h
    count = int(np.count_nonzero(mask))
    if count == 0:
        return 0.0, None, (width, height)
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    bbox = (
        float(cols[0] * sx),
        float(rows[0] * sy),
        float((cols[-1] - cols[0] + 1) * sx),
        float((rows[-1] - rows[0] + 1) * sy),
    )
    return float(count * sx * sy), bbox, (width, height)

"""Pre-removal filters: which instances are worth removing.

Every instance of the index comes out again, kept or rejected with one reason (the first that
applies, in this order):

    path_escapes_root   the image path leaves the dataset's images root (never read)
    image_missing       no file at the image path
    image_unreadable    the file is not a decodable image
    image_size_mismatch the file's size differs from the annotated width/height
    invalid_mask        the annotation's mask is degenerate (see `index_error`)
    crowd               an iscrowd region (a group, not one object)
    excluded_class      the class is in `excluded_classes`
    too_small           area fraction under `min_area_fraction`
    too_large           area fraction over `max_area_fraction`
    touches_border      the box is within `border_margin_fraction` of an image edge

Only numbers the index already holds are used (RLE area, bbox); no mask is decoded here.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pbi_ml import reasons
from pbi_ml.config import CandidateConfig, SourceConfig
from pbi_ml.errors import ItemError
from pbi_ml.imageio import check_image
from pbi_ml.sources.base import INDEX_SCHEMA
from pbi_ml.tables import CANDIDATES

REJECT_REASONS = tuple(reasons.CANDIDATE_REASONS)  # in the order the filters apply


def image_problems(index: pa.Table, source: SourceConfig) -> dict[str | None, str]:
    """image_file -> reason, for every distinct image that cannot be used (one header read each);
    a null image_file is a key too (its reason: the empty path's)."""
    problems: dict[str | None, str] = {}
    if index.num_rows == 0:
        return problems
    files = pc.unique(index.column("image_file")).to_pylist()
    sizes = {}
    for rel in files:
        try:
            sizes[rel] = check_image(source.images, rel or "")
        except ItemError as exc:
            problems[rel] = exc.reason
    # size mismatch: compare the header size with the annotated size of that image
    first = index.group_by("image_file").aggregate([("width", "max"), ("height", "max")])
    for rel, w, h in zip(
        first.column("image_file").to_pylist(),
        first.column("width_max").to_pylist(),
        first.column("height_max").to_pylist(),
        strict=True,
    ):
        if rel in sizes and w and h and sizes[rel] != (w, h):
            problems[rel] = "image_size_mismatch"
    return problems


def filter_candidates(index: pa.Table, source: SourceConfig, config: CandidateConfig) -> pa.Table:
    """Apply the pre-removal filters to an index table; returns `tables.CANDIDATES` rows, same order."""
    n = index.num_rows
    width = index.column("width").to_numpy(zero_copy_only=False).astype(np.float64)
    height = index.column("height").to_numpy(zero_copy_only=False).astype(np.float64)
    area = np.nan_to_num(index.column("area").to_numpy(zero_copy_only=False).astype(np.float64))
    image_area = width * height
    with np.errstate(divide="ignore", invalid="ignore"):
        area_fraction = np.where(image_area > 0, area / image_area, 0.0)

    x = np.nan_to_num(index.column("bbox_x").to_numpy(zero_copy_only=False).astype(np.float64))
    y = np.nan_to_num(index.column("bbox_y").to_numpy(zero_copy_only=False).astype(np.float64))
    w = np.nan_to_num(index.column("bbox_w").to_numpy(zero_copy_only=False).astype(np.float64))
    h = np.nan_to_num(index.column("bbox_h").to_numpy(zero_copy_only=False).astype(np.float64))
    mx = config.border_margin_fraction * width
    my = config.border_margin_fraction * height
    touches_border = (x < mx) | (y < my) | (x + w > width - mx) | (y + h > height - my)
    if config.border_margin_fraction <= 0:
        touches_border = np.zeros(n, dtype=bool)

    invalid = index.column("index_error").is_valid().to_numpy(zero_copy_only=False) | (area <= 0) | (image_area <= 0)
    crowd = index.column("iscrowd").fill_null(pa.scalar(False)).to_numpy(zero_copy_only=False)
    if config.excluded_classes:
        excluded = pc.is_in(index.column("category"), value_set=pa.array(list(config.excluded_classes))).fill_null(
            False
        )
        excluded = excluded.to_numpy(zero_copy_only=False)
    else:
        excluded = np.zeros(n, dtype=bool)

    reasons = np.full(n, None, dtype=object)
    kept = np.ones(n, dtype=bool)  # no reason yet
    if config.check_images:
        problems = image_problems(index, source)
        if problems:
            reasons = np.array([problems.get(f) for f in index.column("image_file").to_pylist()], dtype=object)
            kept = np.array([r is None for r in reasons], dtype=bool)
    # first applicable reason wins: fill later reasons only where still empty
    for mask, reason in (
        (invalid, "invalid_mask"),
        (crowd, "crowd"),
        (excluded, "excluded_class"),
        (area_fraction < config.min_area_fraction, "too_small"),
        (area_fraction > config.max_area_fraction, "too_large"),
        (touches_border, "touches_border"),
    ):
        hit = kept & mask
        reasons[hit] = reason
        kept &= ~hit

    table = index.select(INDEX_SCHEMA.names)
    table = table.append_column("area_fraction", pa.array(area_fraction, pa.float64()))
    table = table.append_column("kept", pa.array(kept, pa.bool_()))
    table = table.append_column("reject_reason", pa.array(reasons.tolist(), pa.string()))
    return table.cast(CANDIDATES.schema)


def reject_counts(candidates: pa.Table) -> dict[str, int]:
    """{reason: count} over rejected rows, plus "kept"."""
    counts = {"kept": int(pc.sum(candidates.column("kept")).as_py() or 0)}
    if candidates.num_rows:
        for row in candidates.group_by("reject_reason").aggregate([("kept", "count")]).to_pylist():
            if row["reject_reason"] is not None:
                counts[row["reject_reason"]] = int(row["kept_count"])
    return counts

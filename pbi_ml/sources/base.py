"""The normalised instance index every source reader produces.

One row per annotated instance, whatever the source format. Masks stay compact: COCO/LVIS rows
carry their segmentation as a JSON string (polygons or RLE, exactly as annotated); Open Images rows
carry the path of their mask PNG relative to the source's `masks` root. Numbers that only need the
mask's area or box (area, bbox) are computed with pycocotools' RLE operations, never by decoding a
full mask.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

INDEX_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("shard", pa.string()),  # "000" .. shard_key(num_shards - 1)
        ("image_id", pa.string()),
        ("annotation_id", pa.string()),
        ("category", pa.string()),  # human-readable class name ("cat", "coffee cup")
        ("category_id", pa.string()),  # the source's own id ("17", "/m/01yrx")
        ("category_frequency", pa.string()),  # LVIS "r" / "c" / "f"; null elsewhere
        ("category_synonyms", pa.list_(pa.string())),  # LVIS synonyms; [category] elsewhere
        ("category_not_exhaustive", pa.bool_()),  # LVIS: class listed in the image's not_exhaustive_category_ids
        ("image_file", pa.string()),  # relative to the source's images root, as annotated
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bbox_x", pa.float64()),
        ("bbox_y", pa.float64()),
        ("bbox_w", pa.float64()),
        ("bbox_h", pa.float64()),
        ("area", pa.float64()),  # mask area in pixels (0 for a degenerate mask)
        ("iscrowd", pa.bool_()),
        ("segmentation", pa.string()),  # JSON: [[x,y,...], ...] or {"size": [h, w], "counts": ...}
        ("mask_file", pa.string()),  # Open Images: relative to the masks root
        ("index_error", pa.string()),  # null, or why this annotation's mask is unusable
    ]
)


def stable_hash(value: str) -> int:
    """A process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "big")


def shard_of(image_id: str, num_shards: int) -> int:
    """An image's shard: stable_hash(image_id) mod num_shards."""
    return stable_hash(image_id) % num_shards

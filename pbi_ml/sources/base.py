"""The normalised instance index every source reader produces.

One row per annotated instance, whatever the source format. Masks stay compact: COCO/LVIS rows
carry their segmentation as a JSON string (polygons or RLE, exactly as annotated); Open Images rows
carry the path of their mask PNG relative to the source's `masks` root. Numbers that only need the
mask's area or box (area, bbox) are computed with pycocotools' RLE operations, never by decoding a
full mask.
"""

from __future__ import annotations

import hashlib

from pbi_ml.tables import INDEX_SCHEMA  # declared with every other table; re-exported here

__all__ = ["INDEX_SCHEMA", "shard_of", "stable_hash"]


def stable_hash(value: str) -> int:
    """A process-independent 64-bit hash (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(str(value).encode(), digest_size=8).digest(), "big")


def shard_of(image_id: str, num_shards: int) -> int:
    """An image's shard: stable_hash(image_id) mod num_shards."""
    return stable_hash(image_id) % num_shards

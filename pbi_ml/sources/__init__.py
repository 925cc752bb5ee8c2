"""Source readers: COCO, LVIS and Open Images annotations -> one normalised instance index.

    read_source_index(source, num_shards)            parse a source (no cache)
    load_source_index(source, num_shards, storage)   parse once, cache as Parquet, reuse
    shard_index(source, shard, num_shards, storage)  the cached rows of one shard
    decode_mask(row, source)                         the HxW bool mask of one index row

The table's columns are INDEX_SCHEMA (pbi_ml/sources/base.py).
"""

from pbi_ml.sources.base import INDEX_SCHEMA, shard_of, stable_hash
from pbi_ml.sources.decode import decode_mask
from pbi_ml.sources.index import READER_VERSION, load_source_index, read_source_index, shard_index

__all__ = [
    "INDEX_SCHEMA",
    "READER_VERSION",
    "decode_mask",
    "load_source_index",
    "read_source_index",
    "shard_index",
    "shard_of",
    "stable_hash",
]

"""The source-index stage: the instances of one partition (source x shard)."""

from __future__ import annotations

import pyarrow.compute as pc

from pbi_ml.config import SourceConfig
from pbi_ml.stages.common import StageResult
from pbi_ml.storage import Storage

STAGE = "source_index"


def run_source_index(storage: Storage, source: SourceConfig, shard: str, num_shards: int) -> StageResult:
    """Parse (or reuse the cached parse of) the source's annotations and keep this shard's rows."""
    from pbi_ml.sources import shard_index

    table = shard_index(source, shard, num_shards, storage)
    path = storage.write_table(STAGE, source.name, shard, table)
    counts = {
        "images": len(pc.unique(table.column("image_id"))) if table.num_rows else 0,
        "instances": table.num_rows,
        "classes": len(pc.unique(table.column("category"))) if table.num_rows else 0,
        "instances_with_index_error": int(table.column("index_error").is_valid().to_numpy(zero_copy_only=False).sum()),
    }
    return StageResult(table=table, path=path, counts=counts)

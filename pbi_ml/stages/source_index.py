"""The source-index stage: the images and instances of one partition (source x shard).

Normalised from COCO / LVIS / Open Images annotations, one row per instance; masks kept compact
as polygons / RLE JSON or mask-PNG paths. An image's shard is stable_hash(image_id) mod
num_shards. The whole source is parsed once and cached under index/<source>/.
"""

from __future__ import annotations

import pyarrow.compute as pc

from pbi_ml.config import SourceConfig, SourceIndexConfig
from pbi_ml.stages.common import Progress, StageResult
from pbi_ml.storage import Storage
from pbi_ml.tables import SOURCE_INDEX


def run_source_index(
    storage: Storage, source: SourceConfig, shard: str, config: SourceIndexConfig, *, progress: Progress | None = None
) -> StageResult:
    """Parse (or reuse the cached parse of) the source's annotations and keep this shard's rows."""
    from pbi_ml.sources import shard_index

    table = shard_index(source, shard, config.num_shards, storage)
    path = storage.write_table(SOURCE_INDEX, source.name, shard, table)
    counts = {
        "images": len(pc.unique(table.column("image_id"))) if table.num_rows else 0,
        "instances": table.num_rows,
        "classes": len(pc.unique(table.column("category"))) if table.num_rows else 0,
        "instances_with_index_error": int(table.column("index_error").is_valid().to_numpy(zero_copy_only=False).sum()),
    }
    if progress:
        progress(table.num_rows, table.num_rows)
    return StageResult(table=table, path=path, counts=counts)

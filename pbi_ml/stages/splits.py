"""The splits stage: train or test for every pair of the partition."""

from __future__ import annotations

import pyarrow as pa

from pbi_ml.config import ProjectConfig, SplitConfig
from pbi_ml.splits import assign_split, test_image_ids
from pbi_ml.stages.common import StageResult
from pbi_ml.storage import Storage, table_from_records

STAGE = "splits"

SPLIT_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("image_id", pa.string()),
        ("annotation_id", pa.string()),
        ("split", pa.string()),
        ("split_rule", pa.string()),  # test_source | image_in_a_test_source | hash
    ]
)


def run_splits(
    storage: Storage, project: ProjectConfig, source_name: str, shard: str, config: SplitConfig
) -> StageResult:
    source = project.source(source_name)
    pairs = storage.read_table("pairs", source_name, shard).to_pylist()
    held_out = test_image_ids(project, storage) if source.role != "test" else set()
    rows = []
    for row in pairs:
        split, rule = assign_split(source, row["image_id"], held_out, config)
        rows.append(
            {
                **{k: row[k] for k in ("pair_id", "source", "shard", "image_id", "annotation_id")},
                "split": split,
                "split_rule": rule,
            }
        )
    table = table_from_records(rows, SPLIT_SCHEMA)
    path = storage.write_table(STAGE, source_name, shard, table)
    counts = {
        "pairs": len(rows),
        "train": sum(r["split"] == "train" for r in rows),
        "test": sum(r["split"] == "test" for r in rows),
    }
    return StageResult(table=table, path=path, counts=counts)

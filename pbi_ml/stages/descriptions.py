"""The descriptions stage: what each removed object looks like, one text per pair.

The describer sees the ORIGINAL photo with everything but the object masked out (SPEC: CogVLM with
"Accurately describe the main characteristics of the <class>..."). Backends: `pixels` (embedded
default: colour names, size and shape measured under the mask) or `vlm` (transformers
image-text-to-text). Per-pair records make the stage resumable; the describer always sees the
same fixed chunks of pairs (`chunks_to_run`), so a resumed run writes the same texts.
"""

from __future__ import annotations

import pyarrow as pa

from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_mask_png, load_rgb_path
from pbi_ml.stages.common import Progress, ProgressReporter, StageResult, chunks_to_run, fingerprint
from pbi_ml.storage import Storage, table_from_records

STAGE = "descriptions"

DESCRIPTION_SCHEMA = pa.schema(
    [
        ("pair_id", pa.string()),
        ("source", pa.string()),
        ("shard", pa.string()),
        ("annotation_id", pa.string()),
        ("category", pa.string()),
        ("description", pa.string()),  # null when the pair failed (see error)
        ("describe_backend", pa.string()),
        ("describe_model", pa.string()),
        ("error", pa.string()),
    ]
)


def run_descriptions(
    storage: Storage, source: str, shard: str, config, describer=None, progress: Progress | None = None
) -> StageResult:
    from pbi_ml.describe import DescribeItem, make_describer

    pairs = storage.read_table("pairs", source, shard).to_pylist()
    config_id = fingerprint(config, exclude=("batch_size", "device"))
    model = config.model if config.backend == "vlm" else None
    done: dict[str, dict] = {}
    todo = []
    for row in pairs:
        record = storage.read_item_record(STAGE, source, shard, row["annotation_id"])
        if record and record.get("config_id") == config_id:
            done[row["pair_id"]] = record
        else:
            todo.append(row)

    reporter = ProgressReporter(len(pairs), progress)
    reporter.advance(len(done))
    if todo and describer is None:
        describer = make_describer(config)
    finished = set(done)
    for batch in chunks_to_run(pairs, config.batch_size, lambda row: row["pair_id"] in finished):
        items, ready = [], []
        for row in batch:
            try:
                items.append(
                    DescribeItem(
                        image=load_rgb_path(row["target_image"]),
                        mask=load_mask_png(row["mask"]),
                        category=row["category"],
                    )
                )
                ready.append(row)
            except ItemError as exc:
                if row["pair_id"] not in finished:
                    done[row["pair_id"]] = _record(storage, source, shard, row, config_id, None, exc.reason)
        texts = describer.describe(items) if items else []
        for row, text in zip(ready, texts):
            if row["pair_id"] in finished:
                continue  # computed only to keep the chunk whole
            text = (text or "").strip()
            done[row["pair_id"]] = _record(
                storage, source, shard, row, config_id, text or None, None if text else "empty_description"
            )
        reporter.advance(sum(1 for row in batch if row["pair_id"] not in finished))

    rows = []
    for row in pairs:
        record = done[row["pair_id"]]
        rows.append(
            {
                **{k: row[k] for k in ("pair_id", "source", "shard", "annotation_id", "category")},
                "description": record["description"],
                "describe_backend": config.backend,
                "describe_model": model,
                "error": record["error"],
            }
        )
    table = table_from_records(rows, DESCRIPTION_SCHEMA)
    path = storage.write_table(STAGE, source, shard, table)
    counts = {
        "pairs": len(rows),
        "described": sum(1 for r in rows if r["description"]),
        "failed": sum(1 for r in rows if r["error"]),
        "computed_this_run": len(todo),
    }
    return StageResult(table=table, path=path, counts=counts)


def _record(storage, source, shard, row, config_id, description, error) -> dict:
    record = {"config_id": config_id, "description": description, "error": error}
    storage.write_item_record(STAGE, source, shard, row["annotation_id"], record)
    return record

"""The filter-score stage: score every removal candidate, decide which pass, choose one per object.

One row per removal candidate with the SPEC's three filters (consensus across candidates, removal
verification against the class, importance of the edit), `passed`, `reject_reason` and `chosen`
(at most one per object: the passing candidate with the lowest removal score). Objects are scored
in batches and recorded one by one, so a crash loses nothing already scored.
"""

from __future__ import annotations

from collections import defaultdict

import pyarrow as pa

from pbi_ml.config import ScoringConfig, SourceConfig
from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_rgb, load_rgb_path
from pbi_ml.masks import dilate
from pbi_ml.sources import decode_mask
from pbi_ml.stages.common import Progress, ProgressReporter, StageResult, chunks_to_run, fingerprint
from pbi_ml.storage import Storage, table_from_records

STAGE = "removal_scores"


def score_schema() -> pa.Schema:
    from pbi_ml.scoring import SCORE_FIELDS

    return pa.schema(
        [
            ("source", pa.string()),
            ("shard", pa.string()),
            ("image_id", pa.string()),
            ("annotation_id", pa.string()),
            ("category", pa.string()),
            ("candidate", pa.int32()),
            ("method", pa.string()),
            ("removal_image", pa.string()),
            *SCORE_FIELDS,
            ("scoring_backend", pa.string()),
            ("passed", pa.bool_()),
            ("reject_reason", pa.string()),
            ("chosen", pa.bool_()),
        ]
    )


def run_scores(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: ScoringConfig,
    progress: Progress | None = None,
) -> StageResult:
    from pbi_ml.scoring import ObjectToScore, check_object, decide, score_objects

    removals = storage.read_table("removals", source.name, shard).to_pylist()
    candidates = {r["annotation_id"]: r for r in storage.read_table("candidates", source.name, shard).to_pylist()}
    by_object: dict[str, list[dict]] = defaultdict(list)
    failed_objects: dict[str, str] = {}
    for row in removals:
        if row["status"] == "ok":
            by_object[row["annotation_id"]].append(row)
        else:
            failed_objects[row["annotation_id"]] = row["error"]
    config_id = (
        fingerprint(config, exclude=("batch_size", "device")) + "-" + (removals[0]["config_id"] if removals else "")
    )

    done: dict[str, list[dict]] = {}
    for ann_id in by_object:
        record = storage.read_item_record(STAGE, source.name, shard, ann_id)
        if record and record.get("config_id") == config_id:
            done[ann_id] = record["rows"]

    reporter = ProgressReporter(len(by_object), progress)
    reporter.advance(len(done))
    # fixed chunks of objects, recomputed whole, so a resumed run writes the same floats
    finished = set(done)
    for batch in chunks_to_run(list(by_object), max(1, config.batch_size // 3), lambda ann_id: ann_id in finished):
        objects, ids = [], []
        for ann_id in batch:
            rows = sorted(by_object[ann_id], key=lambda r: r["candidate"])
            cand_row = candidates[ann_id]
            try:
                mask = decode_mask(cand_row, source)
                obj = ObjectToScore(
                    original=load_rgb(source.images, cand_row["image_file"]),
                    mask=mask,
                    dilated_mask=dilate(mask, rows[0]["dilation_px"]),
                    candidates=[load_rgb_path(r["removal_image"]) for r in rows],
                    category=cand_row["category"],
                )
                check_object(obj)
            except ItemError as exc:
                if ann_id not in finished:
                    failed_objects[ann_id] = exc.reason
                continue
            objects.append(obj)
            ids.append(ann_id)
        if objects:
            scored = score_objects(objects, config)
            for ann_id, score_rows in zip(ids, scored):
                if ann_id in finished:
                    continue  # computed only to keep the chunk whole
                rows = sorted(by_object[ann_id], key=lambda r: r["candidate"])
                merged = [
                    {
                        **{
                            k: r[k]
                            for k in (
                                "source",
                                "shard",
                                "image_id",
                                "annotation_id",
                                "category",
                                "candidate",
                                "method",
                                "removal_image",
                            )
                        },
                        **s,
                    }
                    for r, s in zip(rows, score_rows)
                ]
                decided = decide(merged, config)
                for row in decided:
                    row["scoring_backend"] = config.backend
                done[ann_id] = decided
                storage.write_item_record(STAGE, source.name, shard, ann_id, {"config_id": config_id, "rows": decided})
        reporter.advance(sum(1 for ann_id in batch if ann_id not in finished))

    schema = score_schema()
    rows = [row for ann_id in sorted(done, key=_natural) for row in done[ann_id]]
    table = table_from_records(rows, schema)
    path = storage.write_table(STAGE, source.name, shard, table)
    chosen = sum(1 for r in rows if r.get("chosen"))
    reasons: dict[str, int] = defaultdict(int)
    for r in rows:
        if not r.get("passed"):
            for reason in (r.get("reject_reason") or "unknown").split("+"):
                reasons[f"rejected_{reason}"] += 1
    counts = {
        "objects_scored": len(done),
        "objects_with_a_passing_candidate": chosen,
        "objects_without_a_passing_candidate": len(done) - chosen,
        "objects_failed": len(failed_objects),
        "candidates": len(rows),
        **reasons,
    }
    return StageResult(table=table, path=path, counts=counts)


def _natural(value: str):
    return (0, int(value), "") if value.isdigit() else (1, 0, value)

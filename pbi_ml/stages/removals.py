"""The removal stage: inpaint every kept candidate K times.

Per object, the K inpainted images are PNG files at deterministic paths and a small JSON record
marks the object finished. A re-run skips objects whose record matches the current removal config
(a crash loses only the objects in flight); a changed config redoes them. An object whose image or
mask is broken gets a `failed` record with its reason and the partition goes on.

Fixed chunks: the partition's kept objects, ordered by image size (so one pipeline batch holds one
working size) and then by annotation id, are cut into chunks of `batch_size` objects, and the
inpainter is always called with a whole chunk (`chunks_to_run`): a resumed run gives the bytes of
an uninterrupted one even though an object's pixels can depend on the batch it was computed in.
`batch_size` is left out of the config id (changing it does not redo finished work), so change it
between runs of one partition only if byte-identity with an earlier run does not matter.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pbi_ml.config import RemovalConfig, SourceConfig
from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_rgb, save_png
from pbi_ml.masks import dilate
from pbi_ml.sources import decode_mask
from pbi_ml.stages.common import Progress, ProgressReporter, StageResult, chunks_to_run, fingerprint
from pbi_ml.storage import Storage, table_from_records

STAGE = "removals"

REMOVAL_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("shard", pa.string()),
        ("image_id", pa.string()),
        ("annotation_id", pa.string()),
        ("category", pa.string()),
        ("candidate", pa.int32()),  # 0..K-1; -1 on the row of an object that failed
        ("method", pa.string()),  # e.g. "telea r=3", "sd seed=1"
        ("removal_image", pa.string()),  # absolute path of the inpainted PNG
        ("status", pa.string()),  # "ok" or "failed"
        ("error", pa.string()),  # reason when failed
        ("backend", pa.string()),
        ("dilation_px", pa.int32()),  # the dilation the removal used (scores and pairs reuse it)
        ("config_id", pa.string()),
    ]
)


def removal_config_id(config: RemovalConfig) -> str:
    return fingerprint(config, exclude=("batch_size", "device"))


def run_removals(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: RemovalConfig,
    inpainter=None,
    progress: Progress | None = None,
    retry_failed: bool = False,
) -> StageResult:
    """Inpaint the kept candidates of one partition; writes tables/removals/<source>/<shard>.parquet."""
    candidates = storage.read_table("candidates", source.name, shard)
    kept = candidates.filter(pc.field("kept")).to_pylist()
    config_id = removal_config_id(config)
    storage.sweep_stale_temp_files(source.name, shard)

    records: dict[str, dict] = {}
    todo = []
    for row in kept:
        record = storage.read_item_record(STAGE, source.name, shard, row["annotation_id"])
        if record and record.get("config_id") == config_id and _files_present(storage, record):
            if record["status"] == "ok" or not retry_failed:
                records[row["annotation_id"]] = record
                continue
        todo.append(row)

    reporter = ProgressReporter(len(kept), progress)
    reporter.advance(len(records))
    finished = set(records)
    ordered = sorted(kept, key=lambda row: (row["height"], row["width"], row["annotation_id"]))
    chunks = chunks_to_run(ordered, config.batch_size, lambda row: row["annotation_id"] in finished)
    recomputed = 0
    if chunks:
        if inpainter is None:
            from pbi_ml.removal import make_inpainter

            inpainter = make_inpainter(config)
        labels = inpainter.candidate_labels()
    for chunk in chunks:
        ready, images, masks, categories = [], [], [], []
        for row in chunk:
            try:
                image = load_rgb(source.images, row["image_file"])
                mask = decode_mask(row, source)
                if mask.shape != image.shape[:2]:
                    raise ItemError("mask_size_mismatch", f"mask {mask.shape} vs image {image.shape[:2]}")
                if not mask.any():
                    raise ItemError("invalid_mask", "empty mask")
            except ItemError as exc:
                if row["annotation_id"] not in finished:
                    records[row["annotation_id"]] = _write_failed(storage, source, shard, row, exc, config, config_id)
                continue
            ready.append(row)
            images.append(image)
            masks.append(dilate(mask, config.dilation_px))
            categories.append(row["category"])
        if ready:
            outputs = inpainter.inpaint(images, masks, categories)
            for row, candidates_k in zip(ready, outputs):
                if row["annotation_id"] in finished:
                    recomputed += 1  # computed only to keep the chunk whole: see the module docstring
                    continue
                records[row["annotation_id"]] = _write_ok(
                    storage, source, shard, row, candidates_k, labels, config, config_id
                )
        reporter.advance(sum(1 for row in chunk if row["annotation_id"] not in finished))

    rows = []
    for row in kept:
        record = records[row["annotation_id"]]
        base = {k: row[k] for k in ("source", "shard", "image_id", "annotation_id", "category")}
        base.update(
            backend=record["backend"],
            config_id=record["config_id"],
            status=record["status"],
            dilation_px=record["dilation_px"],
        )
        if record["status"] == "ok":
            for cand in record["candidates"]:
                rows.append(
                    dict(
                        base,
                        candidate=cand["candidate"],
                        method=cand["method"],
                        removal_image=str(storage.root / cand["path"]),
                    )
                )
        else:
            rows.append(dict(base, candidate=-1, error=record["error"]))
    table = table_from_records(rows, REMOVAL_SCHEMA)
    path = storage.write_table(STAGE, source.name, shard, table)
    ok_objects = sum(1 for r in records.values() if r["status"] == "ok")
    counts = {
        "objects": len(kept),
        "objects_ok": ok_objects,
        "objects_failed": len(kept) - ok_objects,
        "objects_computed_this_run": len(todo),
        "objects_recomputed_to_keep_chunks_whole": recomputed,
        "candidates": sum(1 for r in rows if r["status"] == "ok"),
    }
    samples = []
    for record in list(records.values())[:2]:
        if record["status"] == "ok":
            from pbi_ml.imageio import load_rgb_path

            samples.append(
                (
                    f"{record['annotation_id']} {record['candidates'][0]['method']}",
                    load_rgb_path(storage.root / record["candidates"][0]["path"]),
                )
            )
    return StageResult(table=table, path=path, counts=counts, samples=samples)


def _files_present(storage: Storage, record: dict) -> bool:
    return all((storage.root / c["path"]).exists() for c in record.get("candidates", []))


def _write_ok(storage, source, shard, row, images: list[np.ndarray], labels, config, config_id) -> dict:
    directory = storage.file_dir(STAGE, source.name, shard, row["annotation_id"])
    cands = []
    for k, image in enumerate(images):
        path = save_png(image, directory / f"cand{k}.png")
        cands.append({"candidate": k, "method": labels[k], "path": str(path.relative_to(storage.root))})
    record = {
        "annotation_id": row["annotation_id"],
        "status": "ok",
        "backend": config.backend,
        "dilation_px": config.dilation_px,
        "config_id": config_id,
        "candidates": cands,
    }
    storage.write_item_record(STAGE, source.name, shard, row["annotation_id"], record)
    return record


def _write_failed(storage, source, shard, row, exc: ItemError, config, config_id) -> dict:
    record = {
        "annotation_id": row["annotation_id"],
        "status": "failed",
        "error": exc.reason,
        "detail": exc.detail[:500],
        "backend": config.backend,
        "dilation_px": config.dilation_px,
        "config_id": config_id,
        "candidates": [],
    }
    storage.write_item_record(STAGE, source.name, shard, row["annotation_id"], record)
    return record

"""The one resumable item-stage mechanism: every per-item stage runs through `run_item_stage`.

A stage (removals, removal_scores, pairs, descriptions, instructions) says only

    items()            the partition's items, in a fixed order: a key, the upstream rows the item
                       needs, a fingerprint of those rows, and the files preparing it reads
                       (upstream tables read through `Storage.read_table`, which the stamp of an
                       unchanged partition watches; anything else must be in the items themselves)
    prepare(item)      load and validate one item's inputs (raise ItemError: that item fails)
    compute(prepared)  one batch through the model; per item a result, or an ItemError
    write(item, result, directory)   the item's output files and data
    rows(item, record) / failed_rows(item, reason)   the table rows of a finished item

and this module owns everything else, the same way for all of them:

- The item record marks an item finished; the records of a partition are one ledger
  (items/<table>/<source>/<shard>/ledger.jsonl, `pbi_ml.storage.Ledger`), appended once per
  chunk after the chunk's files (a kill -9 loses at most the chunk in flight) and compacted
  atomically at the end of the run: one bookkeeping file per stage and partition. It holds
  the stage's config id, the item's upstream fingerprint, the status and reason, every output
  file's path (relative to the data root), size, mtime_ns and digest (of the bytes written, no
  read-back), and the stage's data. A finished item is TRUSTED only when its config id and
  upstream fingerprint still match and
    ok:      every output file is still there with the size and mtime it was written with; a
             file whose mtime changed (a copied data root) is re-hashed once and trusted when its
             digest matches (the record takes the new mtime); a missing, truncated or changed
             file makes the item run again. Trust by stat: a re-run reads no output file.
             `verify_items` re-hashes everything and invalidates the items with corrupt files
             (corruption that kept size and mtime is only visible to it). When nothing at all
             changed since the last run (`FinishedStamp`: config, upstream tables, ledger,
             table, every file's size and mtime), a re-run reads no record either: it stats
             the files and returns the table as it is;
    failed:  the files it failed on are unchanged (size and mtime): fix or regenerate an input
             and the item is retried.
- Nothing recorded or fingerprinted holds the data root's absolute path (`portable`): a data
  root copied elsewhere is trusted as it is.
  A changed upstream item (re-removed, re-described) so redoes exactly its dependent items.
- Fixed chunks recomputed whole: the items are cut every `batch_size` items (counted in items,
  whatever the number of images per item), and a chunk with any unfinished item is computed
  whole, dropping the results of its finished items. A model's output can depend on what else
  shares its batch, so this is what makes a resumed run write the bytes of an uninterrupted one
  (at the cost of at most batch_size - 1 extra items per crash).
- Every item that enters the stage leaves rows in the table: ok, or failed with a reason code.
- A model stage sets `device` (the device its backend computes on, `pbi_ml.devices.device_of`):
  each record keeps the device that computed it and every row gets it in a `device` column.
- The next chunk's items are prepared (images decoded, masks built) in a worker thread while
  the current chunk computes, so the GPU does not wait for the disk. `prepare` must therefore
  not touch the model; it reads inputs only.
- Progress (done, total) at most every few seconds; metadata samples that never fail the stage.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from pbi_ml.errors import ItemError
from pbi_ml.stages.common import Progress, ProgressReporter, StageResult, chunks_to_run, fingerprint_of
from pbi_ml.storage import (
    Ledger,
    Storage,
    WrittenFile,
    atomic_write_bytes,
    file_digest,
    safe_name,
    table_from_records,
)
from pbi_ml.tables import ITEM_TABLES, TableSpec

RECORD_VERSION = 3  # records of older code (per-item JSON files) are not read: their items are recomputed once
MAX_SAMPLES = 4  # preview images per stage run (thumbnails in the metadata)
MAX_SAMPLE_TRIES = 64  # ok items asked for a preview at most
STAMP_VERSION = 1


@dataclass(slots=True)
class StageItem:
    """One unit of work. `key` is unique within the partition; `row` carries what the stage
    needs; `upstream` fingerprints the upstream rows it depends on; `input_files` are the files
    `prepare` reads (a failed item is retried when one of them changes)."""

    key: str
    row: dict
    upstream: str
    input_files: tuple[str, ...] = ()


@dataclass
class ItemOutput:
    """What `write` made for one item: output files (name -> the file written under the data root,
    `pbi_ml.imageio.save_png`) and JSON-serialisable data for its rows."""

    files: dict[str, WrittenFile] = field(default_factory=dict)
    data: dict = field(default_factory=dict)


class ItemStage:
    """What one per-item stage provides. Subclasses set `table`, `batch_size` and `config_id`."""

    table: TableSpec
    batch_size: int = 1
    config_id: str = ""
    device: str | None = None  # model stages: the device compute() runs on (rows get a `device` column)

    def items(self) -> list[StageItem]:
        raise NotImplementedError

    def prepare(self, item: StageItem) -> Any:
        return item.row

    def compute(self, prepared: list[Any]) -> list[Any]:
        return prepared

    def write(self, item: StageItem, result: Any, directory: Path) -> ItemOutput:
        raise NotImplementedError

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        raise NotImplementedError

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        raise NotImplementedError

    def sample(self, item: StageItem, record: dict) -> list[tuple[str, np.ndarray]]:
        """(caption, image) previews of one finished item for the metadata."""
        return []

    def counts(self, rows: list[dict]) -> dict[str, int | float]:
        return {}


def portable(storage: Storage, value: Any) -> Any:
    """`value` with every path under the data root made relative to it (recursively through dicts
    and lists): what fingerprints and records hold, so a moved data root changes none of them."""
    if isinstance(value, dict):
        return {k: portable(storage, v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(storage, v) for v in value]
    if isinstance(value, str) and value.startswith(f"{storage.root}{os.sep}"):
        return value[len(str(storage.root)) + 1 :]
    return value


def input_signature(storage: Storage, paths: tuple[str, ...]) -> list:
    """(path, size, mtime_ns) of each input file (paths under the data root relative to it);
    (path, None, None) for a missing one."""
    signature = []
    for path in paths:
        try:
            st = os.stat(path)
            signature.append([portable(storage, str(path)), st.st_size, st.st_mtime_ns])
        except OSError:
            signature.append([portable(storage, str(path)), None, None])
    return signature


class ItemRecords:
    """The finished-item records of one stage and partition (its ledger). New records are kept
    until `flush` appends them; `compact` rewrites the ledger with the latest record per item."""

    def __init__(self, storage: Storage, stage: ItemStage, source: str, shard: str):
        self.storage = storage
        self.stage = stage
        self.ledger = storage.ledger(stage.table, source, shard)
        self.recorded, self.lines = self.ledger.read()
        self.pending: list[dict] = []
        self.root_prefix = os.path.join(storage.root, "")  # joined as a string: no Path per file per re-run

    def read(self, item: StageItem) -> dict | None:
        record = self.recorded.get(item.key)
        if record is None or record.get("version") != RECORD_VERSION:
            return None  # absent, or written by older code
        return record

    def trusted(self, item: StageItem, record: dict | None) -> bool:
        if record is None:
            return False
        if record.get("config_id") != self.stage.config_id or record.get("upstream") != item.upstream:
            return False
        if record["status"] == "ok":
            return self.outputs_intact(item, record)
        return record.get("inputs") == input_signature(self.storage, item.input_files)

    def outputs_intact(self, item: StageItem, record: dict) -> bool:
        """Every output file has its recorded size and mtime, or (mtime changed) its digest."""
        moved = False
        for entry in record["files"].values():
            path = self.root_prefix + entry["path"]
            try:
                st = os.stat(path)
            except OSError:
                return False
            if st.st_size != entry["size"]:
                return False
            if st.st_mtime_ns != entry["mtime_ns"]:
                if file_digest(path) != entry["digest"]:
                    return False
                entry["mtime_ns"] = st.st_mtime_ns
                moved = True
        if moved:
            self._save(item, record)
        return True

    def write_ok(self, item: StageItem, output: ItemOutput) -> dict:
        files = {}
        for name, written in sorted(output.files.items()):
            st = os.stat(written.path)
            path = str(written.path.relative_to(self.storage.root))
            files[name] = {"path": path, "digest": written.digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        record = self._base(item, "ok")
        record.update(
            files=files,
            # of relative paths and contents only: the same on every data root and every run
            output_digest=fingerprint_of({n: {k: f[k] for k in ("digest", "path")} for n, f in files.items()})
            if files
            else None,
            data=output.data,
        )
        return self._save(item, record)

    def write_failed(self, item: StageItem, exc: ItemError) -> dict:
        record = self._base(item, "failed")
        record.update(
            error=exc.reason,
            detail=str(exc.detail)[:500],
            inputs=input_signature(self.storage, item.input_files),
            files={},
            output_digest=None,
            data={},
        )
        return self._save(item, record)

    def _base(self, item: StageItem, status: str) -> dict:
        return {
            "version": RECORD_VERSION,
            "key": item.key,
            "config_id": self.stage.config_id,
            "upstream": item.upstream,
            "status": status,
            "error": None,
            "device": self.stage.device,
        }

    def _save(self, item: StageItem, record: dict) -> dict:
        self.recorded[item.key] = record
        self.pending.append(record)
        return record

    def flush(self) -> None:
        """Append the new records to the ledger (flushed and fsynced)."""
        self.ledger.append(self.pending)
        self.lines += len(self.pending)
        self.pending = []

    def compact(self) -> None:
        """Rewrite the ledger atomically with one record per item, when it holds more lines."""
        self.flush()
        if self.lines != len(self.recorded):
            self.ledger.rewrite([self.recorded[key] for key in sorted(self.recorded)])
            self.lines = len(self.recorded)
            for old in self.ledger.path.parent.glob("*.json"):  # per-item records of older code, redone
                old.unlink(missing_ok=True)


def absolute_files(storage: Storage, record: dict) -> dict[str, str]:
    """name -> absolute path of a finished record's output files."""
    return {name: str(storage.root / f["path"]) for name, f in record.get("files", {}).items()}


class FinishedStamp:
    """What the last run of a stage's partition finished with, so that a re-run in which nothing
    changed stats each file and returns the table as it is, reading no record (items/<table>/
    <source>/<shard>/finished.json, written atomically after the table).

    It holds the stage's config id, the table schema, the data root (rows hold absolute paths), a
    digest of the items (keys, upstream fingerprints, input files, in order), the size and
    mtime_ns of every table the items were read from (`Storage.recording_reads`), of the ledger
    and of the table written, every finished item's output files (ok) or input files (failed) with
    the size and mtime_ns its record holds, the run's counts, and the records the samples came
    from. A re-run is UNCHANGED when all of these are equal now: then every item is trusted
    exactly as `ItemRecords.trusted` would trust it (same config id and upstream, files with the
    recorded size and mtime), and the table is what the rows would be again, so it is returned as
    it is. Anything else (a changed upstream table, a touched file, a rewritten ledger, a moved
    root) takes the item-by-item path, which writes a new stamp."""

    def __init__(
        self, storage: Storage, stage: ItemStage, source: str, shard: str, items: list[StageItem], reads: list[list]
    ):
        self.storage, self.stage, self.source, self.shard = storage, stage, source, shard
        self.items, self.reads = items, reads
        self.ledger_path = storage.ledger(stage.table, source, shard).path
        self.path = self.ledger_path.parent / "finished.json"

    @cached_property
    def _identity(self) -> dict:  # once per run: the fast path compares it, the slow path writes it
        blob = "\n".join(["\x00".join((item.key, item.upstream, *map(str, item.input_files))) for item in self.items])
        return {
            "version": STAMP_VERSION,
            "config_id": self.stage.config_id,
            "schema": fingerprint_of(str(self.stage.table.schema)),
            "root": fingerprint_of(str(self.storage.root)),  # a digest: no absolute path is recorded
            "items": hashlib.blake2b(blob.encode(), digest_size=16).hexdigest(),
            "reads": self.reads,
        }

    def unchanged_result(self) -> StageResult | None:
        """The partition's StageResult when nothing changed since the stamp (see the class), else None."""
        try:
            stamp = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return None
        table_path = self.storage.table_path(self.stage.table, self.source, self.shard)
        if (
            not isinstance(stamp, dict)
            or stamp.get("identity") != self._identity
            or stamp.get("ledger") != _stat_of(str(self.ledger_path))
            or stamp.get("table") != _stat_of(str(table_path))
        ):
            return None
        try:
            if not self._files_intact(stamp["paths"], stamp["sizes"], stamp["mtimes"]):
                return None
            counts = {**stamp["counts"], "items_computed_this_run": 0, "items_recomputed_to_keep_chunks_whole": 0}
            sampled = dict(stamp["sampled"])
        except (KeyError, TypeError, ValueError, AttributeError):  # a stamp edited by hand: go item by item
            return None
        samples, _ = _samples(self.stage, [item for item in self.items if item.key in sampled], sampled)
        table = self.storage.read_table(self.stage.table, self.source, self.shard)
        return StageResult(table=table, path=table_path, counts=counts, samples=samples)

    def _files_intact(self, joined_paths: str, sizes: list, mtimes: list) -> bool:
        prefix = os.path.join(self.storage.root, "")
        paths = joined_paths.split("\n") if joined_paths else []
        for path, size, mtime_ns in zip(paths, sizes, mtimes, strict=True):
            try:
                st = os.stat(path if path.startswith(os.sep) else prefix + path)
            except OSError:
                if size is None:  # a failed item's input that was missing then, and is now
                    continue
                return False
            if st.st_size != size or st.st_mtime_ns != mtime_ns:
                return False
        return True

    def write(self, done: dict[str, dict], table_path: Path, counts: dict, sampled: dict[str, dict]) -> None:
        """Stamp what this run finished with (after the table is written)."""
        paths, sizes, mtimes = [], [], []
        for item in self.items:
            record = done[item.key]
            if record["status"] == "ok":
                for entry in record["files"].values():
                    paths.append(entry["path"])
                    sizes.append(entry["size"])
                    mtimes.append(entry["mtime_ns"])
            else:
                for path, size, mtime_ns in record.get("inputs", []):
                    paths.append(path)
                    sizes.append(size)
                    mtimes.append(mtime_ns)
        if any("\n" in path for path in paths):
            return  # a file name with a newline: no stamp, every re-run goes item by item
        stamp = {
            "identity": self._identity,
            "ledger": _stat_of(str(self.ledger_path)),
            "table": _stat_of(str(table_path)),
            "paths": "\n".join(paths),
            "sizes": sizes,
            "mtimes": mtimes,
            "counts": counts,
            "sampled": sampled,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.path, json.dumps(stamp, default=str).encode())


def _stat_of(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def run_item_stage(
    storage: Storage,
    stage: ItemStage,
    source: str,
    shard: str,
    progress: Progress | None = None,
) -> StageResult:
    """Run one per-item stage over one partition (see the module docstring); writes its table."""
    with storage.recording_reads() as reads:
        items = stage.items()
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{stage.table.name}: item keys are not unique in {source}/{shard}")
    stamp = FinishedStamp(storage, stage, source, shard, items, reads)
    unchanged = stamp.unchanged_result()
    if unchanged is not None:
        ProgressReporter(len(items), progress).advance(len(items))
        return unchanged
    records = ItemRecords(storage, stage, source, shard)

    done: dict[str, dict] = {}
    for item in items:
        record = records.read(item)
        if records.trusted(item, record):
            done[item.key] = record  # type: ignore[assignment]
    records.flush()  # records whose files only changed mtime (a copied data root) were re-hashed
    finished = set(done)  # a snapshot: what was finished before this run
    # a killed run's temp files lie where it was writing: the ledger's folder, the unfinished items'
    storage.sweep_stale_temp_files(
        [records.ledger.path.parent]
        + [storage.file_dir(stage.table, source, shard, item.key) for item in items if item.key not in finished]
    )

    reporter = ProgressReporter(len(items), progress)
    reporter.advance(len(finished))
    recomputed = 0
    chunks = chunks_to_run(items, stage.batch_size, lambda item: item.key in finished)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"prepare-{stage.table.name}") as prefetch:
        upcoming = prefetch.submit(_prepare_chunk, stage, chunks[0]) if chunks else None
        for index, chunk in enumerate(chunks):
            assert upcoming is not None
            prepared_chunk = upcoming.result()
            # decode the next chunk while this one computes
            upcoming = prefetch.submit(_prepare_chunk, stage, chunks[index + 1]) if index + 1 < len(chunks) else None
            ready, prepared = [], []
            for item, value in zip(chunk, prepared_chunk, strict=True):
                if isinstance(value, _PrepareFailed):
                    if item.key not in finished:
                        done[item.key] = records.write_failed(item, value.error)
                    continue
                prepared.append(value)
                ready.append(item)
            results = stage.compute(prepared) if prepared else []
            if len(results) != len(ready):
                raise RuntimeError(
                    f"{stage.table.name}: compute returned {len(results)} results for {len(ready)} items"
                )
            for item, result in zip(ready, results, strict=True):
                if item.key in finished:
                    recomputed += 1  # computed only to keep the chunk whole
                    continue
                if isinstance(result, ItemError):
                    done[item.key] = records.write_failed(item, result)
                    continue
                try:
                    output = stage.write(item, result, storage.file_dir(stage.table, source, shard, item.key))
                except ItemError as exc:
                    done[item.key] = records.write_failed(item, exc)
                    continue
                done[item.key] = records.write_ok(item, output)
            records.flush()  # after the chunk's files: a kill loses at most this chunk
            reporter.advance(sum(1 for item in chunk if item.key not in finished))

    records.compact()

    rows: list[dict] = []
    failures: dict[str, int] = {}
    for item in items:
        record = done[item.key]
        if record["status"] == "ok":
            item_rows = stage.rows(item, record)
        else:
            failures[record["error"]] = failures.get(record["error"], 0) + 1
            item_rows = stage.failed_rows(item, record)
        if stage.device is not None:
            for row in item_rows:
                row["device"] = record.get("device")
        rows.extend(item_rows)
    table = table_from_records(rows, stage.table.schema)
    path = storage.write_table(stage.table, source, shard, table)

    ok = sum(1 for record in done.values() if record["status"] == "ok")
    counts: dict[str, int | float] = {
        "items": len(items),
        "items_ok": ok,
        "items_failed": len(items) - ok,
        "items_computed_this_run": len(items) - len(finished),
        "items_recomputed_to_keep_chunks_whole": recomputed,
        **{f"failed_{reason}": n for reason, n in sorted(failures.items())},
        **stage.counts(rows),
    }
    samples, sampled = _samples(stage, items, done)
    stamp.write(done, path, counts, sampled)
    return StageResult(table=table, path=path, counts=counts, samples=samples)


@dataclass
class _PrepareFailed:
    error: ItemError


def _prepare_chunk(stage: ItemStage, chunk: list[StageItem]) -> list[Any]:
    """Each item's prepared input, or _PrepareFailed with its ItemError (runs in the prefetch thread)."""
    prepared: list[Any] = []
    for item in chunk:
        try:
            prepared.append(stage.prepare(item))
        except ItemError as exc:
            prepared.append(_PrepareFailed(exc))
    return prepared


def _samples(
    stage: ItemStage, items: list[StageItem], done: dict[str, dict]
) -> tuple[list[tuple[str, np.ndarray]], dict[str, dict]]:
    """A few preview images for the metadata, from the first ok items (at most MAX_SAMPLE_TRIES
    of them), and the records of the items looked at. Never fails the stage: an unreadable file
    (a disk hiccup after the item was verified) just gives no sample."""
    samples: list[tuple[str, np.ndarray]] = []
    sampled: dict[str, dict] = {}
    for item in items:
        if len(samples) >= MAX_SAMPLES or len(sampled) >= MAX_SAMPLE_TRIES:
            break
        record = done.get(item.key)
        if record is None or record["status"] != "ok":
            continue
        sampled[item.key] = record
        try:
            samples.extend(stage.sample(item, record))
        except (ItemError, OSError, ValueError):
            continue
    return samples[:MAX_SAMPLES], sampled


def verify_report(storage: Storage, source: str, stage: str | None = None) -> tuple[list[str], bool]:
    """What `pbi verify` prints (`verify_items`, a line per bad file), and whether all is intact."""
    bad = verify_items(storage, source, stage)
    lines = [f"{r['problem']}: {r['path']} ({r['stage']} {r['shard']} item {r['item']}: invalidated)" for r in bad]
    lines.append(
        f"{len(bad)} bad files; the next `pbi run` redoes their items" if bad else "every finished item is intact"
    )
    return lines, not bad


def verify_items(storage: Storage, source: str, stage: str | None = None) -> list[dict]:
    """Re-hash every output file of every finished item of `source` (of one stage's table, or of
    all), and invalidate each item with a missing or corrupt file: its record leaves the ledger,
    so the next run redoes exactly those items. One row per bad file: stage, shard, item, path,
    problem. An unknown `stage` is a ValueError naming the item stages."""
    names = [table.name for table in ITEM_TABLES]
    if stage is not None and stage not in names:
        raise ValueError(f"{stage!r} is not an item stage; one of {', '.join(names)}")
    bad = []
    for path in sorted((storage.root / "items").glob(f"{stage or '*'}/{safe_name(source)}/*/ledger.jsonl")):
        ledger = Ledger(path)
        records, _ = ledger.read()
        invalid = set()
        for key, record in sorted(records.items()):
            for entry in record.get("files", {}).values():
                digest = file_digest(storage.root / entry["path"])
                if digest != entry.get("digest"):
                    invalid.add(key)
                    problem = "missing" if digest is None else "corrupt"
                    bad.append(
                        {
                            "stage": path.parts[-4],
                            "shard": path.parts[-2],
                            "item": key,
                            "path": entry["path"],
                            "problem": problem,
                        }
                    )
        if invalid:
            ledger.rewrite([records[key] for key in sorted(records) if key not in invalid])
    return bad

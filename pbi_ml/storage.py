"""Where every artifact lives, and how it is written.

Layout under the data root (all paths deterministic, all writes atomic: temp file + rename):

    tables/<stage>/<source>/<shard>.parquet        one Parquet per stage and partition
    items/<stage>/<source>/<shard>/ledger.jsonl    item records of long stages (resume points), one ledger per partition
    files/<stage>/<source>/<shard>/<item>/...      images, masks (PNG, lossless)
    index/<source>/<fingerprint>/instances.parquet whole-source annotation index (built once)
    global/<stage>/...                             unpartitioned artifacts (exports, checkpoints)
    catalog.duckdb                                 DuckDB: stored joined pairs + live views over tables/ (rebuilt atomically)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pbi_ml.tables import TableSpec

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(value: str) -> str:
    """A file-name-safe form of an id (ids come from annotation files: never trust them)."""
    name = _SAFE.sub("_", str(value)).strip("._") or "_"
    return name[:120]


def safe_name_sql(expression: str) -> str:
    """`safe_name` as a DuckDB expression over a VARCHAR `expression` (the catalog predicts a
    pair's folder with it; tests/unit/test_catalog.py holds the two to the same result)."""
    replaced = f"regexp_replace({expression}, '{_SAFE.pattern}', '_', 'g')"
    return f"left(coalesce(nullif(trim({replaced}, '._'), ''), '_'), 120)"


class Storage:
    """Paths and atomic writes under one data root."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).resolve()
        self._reads: list[list] | None = None  # while `recording_reads`: [path, size, mtime_ns] per table read

    # ---- paths (stages are named by their TableSpec, never by a string literal)
    def table_path(self, table: TableSpec, source: str, shard: str) -> Path:
        return self.root / "tables" / table.name / safe_name(source) / f"{shard}.parquet"

    def table_glob(self, table: TableSpec) -> str:
        return str(self.root / "tables" / table.name / "*" / "*.parquet")

    def schema_path(self, table: TableSpec) -> Path:
        """An empty, typed Parquet file per table, so its catalog view exists before any partition."""
        return self.root / "tables" / table.name / "_schema" / "empty.parquet"

    def item_dir(self, table: TableSpec, source: str, shard: str) -> Path:
        return self.root / "items" / table.name / safe_name(source) / shard

    def file_dir(self, table: TableSpec, source: str, shard: str, item: str) -> Path:
        return self.root / "files" / table.name / safe_name(source) / shard / safe_name(item)

    @staticmethod
    def file_dir_sql(table: TableSpec, source: str, shard: str, item: str) -> str:
        """`file_dir` relative to the data root, as a DuckDB expression over the columns named
        `source`, `shard` and `item`."""
        return f"'files/{table.name}/' || {safe_name_sql(source)} || '/' || {shard} || '/' || {safe_name_sql(item)}"

    def index_dir(self, source: str) -> Path:
        return self.root / "index" / safe_name(source)

    def global_dir(self, stage: str) -> Path:
        return self.root / "global" / stage

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    # ---- tables
    def write_table(self, table: TableSpec, source: str, shard: str, data: pa.Table) -> Path:
        path = self.table_path(table, source, shard)
        write_parquet(data, path)
        return path

    def read_table(self, table: TableSpec, source: str, shard: str) -> pa.Table:
        path = self.table_path(table, source, shard)
        try:
            st = path.stat()  # before reading: a file replaced meanwhile is seen as changed next time
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{path}: stage {table.name!r} has not been materialized for {source}/{shard} yet"
            ) from None
        if self._reads is not None:
            self._reads.append([str(path.relative_to(self.root)), st.st_size, st.st_mtime_ns])
        return pq.read_table(path)

    @contextmanager
    def recording_reads(self) -> Iterator[list[list]]:
        """Within the block, every `read_table` adds [path relative to the root, size, mtime_ns]
        (taken before the read) to the yielded list: what an item stage's items were made from."""
        self._reads = reads = []
        try:
            yield reads
        finally:
            self._reads = None

    def has_table(self, table: TableSpec, source: str, shard: str) -> bool:
        return self.table_path(table, source, shard).exists()

    def sweep_stale_temp_files(self, folders: Iterable[Path], older_than_s: float = 600.0) -> int:
        """Delete temp files a killed process left in `folders` (and below).

        Atomic writes go through `.<name>.<random>.tmp` files renamed into place; a kill -9 between
        the two leaves one behind. Only files older than `older_than_s` go, so a concurrent writer's
        fresh temp file is never touched. Returns how many were deleted."""
        import time

        cutoff = time.time() - older_than_s
        removed = 0
        for folder in folders:
            if not folder.is_dir():
                continue
            for path in folder.rglob(".*.tmp"):
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:
                    pass
        return removed

    # ---- item records (resume points of long stages)
    def ledger(self, table: TableSpec, source: str, shard: str) -> Ledger:
        return Ledger(self.item_dir(table, source, shard) / "ledger.jsonl")


class Ledger:
    """The item records of one stage and partition, one JSON object per line, keyed by "key" (the
    last line of a key wins). Appended a batch at a time, flushed and fsynced (`append`): a kill -9
    leaves at most a torn last line, which `read` ignores; `rewrite` compacts it atomically."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> tuple[dict[str, dict], int]:
        """(key -> latest record, number of lines read): superseded or torn lines make the two differ."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return {}, 0
        lines = data.split(b"\n")
        complete = lines[:-1]  # the last piece is empty, or a line torn by a kill
        try:
            parsed = json.loads(b"[" + b",".join(complete) + b"]")  # one parse: the usual, intact ledger
        except ValueError:
            parsed = [_json_or_none(line) for line in complete]  # a torn line a later append ended
        records = {r["key"]: r for r in parsed if isinstance(r, dict) and isinstance(r.get("key"), str)}
        return records, len(complete) + (lines[-1] != b"")

    def append(self, records: list[dict]) -> None:
        if not records:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+b") as handle:
            torn = False
            if handle.seek(0, os.SEEK_END):
                handle.seek(-1, os.SEEK_END)
                torn = handle.read(1) != b"\n"  # a kill's torn line: end it, `read` skips it
            handle.write((b"\n" if torn else b"") + _lines(records))
            handle.flush()
            os.fsync(handle.fileno())

    def rewrite(self, records: list[dict]) -> None:
        atomic_write_bytes(self.path, _lines(records))


def _json_or_none(line: bytes) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _lines(records: list[dict]) -> bytes:
    return b"".join(json.dumps(r, sort_keys=True, default=_json_default).encode() + b"\n" for r in records)


def _digest():
    import hashlib

    return hashlib.blake2b(digest_size=10)


def bytes_digest(data: bytes) -> str:
    """The `file_digest` of a file holding `data` (computed before writing it: no read-back)."""
    digest = _digest()
    digest.update(data)
    return digest.hexdigest()


def file_digest(path: str | os.PathLike) -> str | None:
    """A short content digest of a file, or None when it cannot be read."""
    digest = _digest()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None
    return digest.hexdigest()


def _json_default(value: Any):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value)}")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success rename it over `path`, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


@dataclass(frozen=True)
class WrittenFile:
    """A file just written, with the digest of the bytes written (see `write_file`)."""

    path: Path
    digest: str


def write_file(path: str | os.PathLike, data: bytes) -> WrittenFile:
    """Write `data` atomically; its digest comes from the bytes in memory, not a read-back."""
    atomic_write_bytes(path, data)
    return WrittenFile(Path(path), bytes_digest(data))


def write_parquet(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a Parquet file atomically and reproducibly (same table -> same bytes)."""
    table = table.replace_schema_metadata(None)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def table_from_records(records: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) -> Arrow table with a fixed schema; an empty list gives an empty valid table."""
    columns = {name: [r.get(name) for r in records] for name in schema.names}
    return pa.Table.from_pydict(columns, schema=schema)

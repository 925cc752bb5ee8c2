"""The DuckDB catalog: stored tables for the joined views, live views over every partition's Parquet.

The canonical data is the Parquet written per stage and partition (tables/<stage>/<source>/<shard>.parquet).
`view_sql` defines every catalog name once, as a SELECT over globs of those files. In the catalog
file (catalog.duckdb):

- the names in `MATERIALIZED` (the joined `pairs`) are computed from the Parquet when the catalog
  is built and stored in the file (the table `<name>_stored`, file paths kept as a file name plus
  the row's folder relative to the data root; `<name>` is the view over it that joins the paths
  back), so a query reads one compact columnar table instead of joining five globs of Parquet
  files (milliseconds instead of hundreds at a million pairs). Each keeps its live form as the
  view `<name>_live` (`pairs_live`);
- every other name (one per stage table: source_index, candidates, ...) is a VIEW, read at query
  time: a partition materialized after the build shows up in it at once.

A stored table is as fresh as the last build: the `catalog` asset rebuilds the file whenever a
partition of an input stage changes (an automation condition, pbi_assets/assets/catalog.py), and
`pbi run` builds it after the partitions; a build whose inputs are those of the file's last
build (no Parquet file of the stored tables' stages written, added or removed) keeps the file. `catalog_info` in the file records what each name is,
its row count and when it was built; `stale_files` lists the Parquet files written since.

Only the catalog asset writes the file (pool `duckdb_catalog`, limit 1): it is built into a temp
file and renamed into place, so readers never see half a catalog and never contend for a write
lock; users open it read-only. Each stage also gets an empty, typed
`tables/<stage>/_schema/empty.parquet` so its view exists (with the right columns) before any
partition has been materialized. `read_view` (what the stages use) always computes from the
Parquet, never from the catalog file. Query it with `pbi sql "SELECT ..."`, or
`duckdb.connect(path, read_only=True)`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pbi_ml.reasons import LOW_CLASS_SIMILARITY
from pbi_ml.storage import Storage, atomic_path, write_parquet
from pbi_ml.tables import (
    ALL_TABLES,
    ARTIFACT_AUDIT,
    CANDIDATES,
    CLASS_SCORES,
    DESCRIPTIONS,
    INSTRUCTIONS,
    PAIR_JUDGMENTS,
    PAIRS,
    SPLITS,
    TableSpec,
)


def _scan(storage: Storage, table: TableSpec) -> str:
    glob = storage.table_glob(table).replace("'", "''")
    return f"read_parquet('{glob}', union_by_name = true)"


def view_sql(storage: Storage) -> dict[str, str]:
    """name -> SELECT statement of every catalog view: one per table (the same name), except that
    `pairs` is joined with descriptions, instructions, splits and the artifact audit's
    detectability, and `candidates` shows the final
    pre-removal decision, the class-similarity filter included."""
    views = {table.name: f"SELECT * FROM {_scan(storage, table)}" for table in ALL_TABLES}
    views[PAIRS.name] = _pairs_view(storage)
    views[CANDIDATES.name] = _candidates_view(storage)
    return views


def _candidates_view(storage: Storage) -> str:
    """`candidates` with the class filter's verdict folded in: `kept` and `reject_reason` are the
    final decision (low_class_similarity when class_scores rejected the object), plus
    `clip_class_sim` and `class_filter` (passed | rejected | skipped | failed | null = not scored)."""
    return (
        "SELECT c.* REPLACE ("
        "c.kept AND coalesce(k.passed, true) AS kept, "
        f"coalesce(c.reject_reason, CASE WHEN k.passed = false THEN '{LOW_CLASS_SIMILARITY}' END) AS reject_reason), "
        "k.clip_class_sim, "
        "CASE WHEN k.status = 'failed' THEN 'failed' WHEN k.passed THEN 'passed' "
        "WHEN k.passed = false THEN 'rejected' WHEN k.status = 'ok' THEN 'skipped' END AS class_filter "
        f"FROM {_scan(storage, CANDIDATES)} c "
        f"LEFT JOIN (SELECT source, annotation_id, clip_class_sim, passed, status FROM {_scan(storage, CLASS_SCORES)}) k "
        "USING (source, annotation_id)"
    )


JUDGE_COLUMNS = ("judge_compliance", "judge_naturalness", "judge_coherence", "judge_score", "judge_reason")


def _pairs_view(storage: Storage) -> str:
    """`pairs`, joined with descriptions, instructions, the pair judge's scores, splits and the artifact
    audit's detectability."""
    select = [
        "p.*",
        "d.description",
        "i.instruction_class",
        "i.instruction_vlm_llm",
        "i.instruction_ref",
        "i.instruction_check",
        *(f"j.{column}" for column in JUDGE_COLUMNS),
        "s.split",
        "a.detectability",
    ]
    joins = [
        f"LEFT JOIN (SELECT pair_id, description FROM {_scan(storage, DESCRIPTIONS)}) d USING (pair_id)",
        f"LEFT JOIN (SELECT pair_id, instruction_class, instruction_vlm_llm, instruction_ref, instruction_check "
        f"FROM {_scan(storage, INSTRUCTIONS)}) i USING (pair_id)",
        f"LEFT JOIN (SELECT pair_id, {', '.join(JUDGE_COLUMNS)} FROM {_scan(storage, PAIR_JUDGMENTS)}) j USING (pair_id)",
        f"LEFT JOIN (SELECT pair_id, split FROM {_scan(storage, SPLITS)}) s USING (pair_id)",
        f"LEFT JOIN (SELECT pair_id, detectability FROM {_scan(storage, ARTIFACT_AUDIT)}) a USING (pair_id)",
    ]
    return f"SELECT {', '.join(select)} FROM {_scan(storage, PAIRS)} p " + " ".join(joins)


def ensure_schema_files(storage: Storage) -> None:
    """The empty, typed Parquet file of every table, so each view has its columns from the start."""
    for table in ALL_TABLES:
        path = storage.schema_path(table)
        if not path.exists():
            write_parquet(table.schema.empty_table(), path)


@dataclass(frozen=True)
class StoredTable:
    """A catalog name (of `view_sql`) stored at build time, beside its live view.

    Its rows are in the table `<name>_stored`, and `<name>` is a view over that table giving the
    live view's columns and values, less `live_only`. What makes a million rows small:
    - each of `path_columns` (absolute file paths, the longest strings of a row) is stored as the
      file's name when the file lies in the row's folder; the folder (`FILES_DIR`, relative to the
      data root) is stored only when it is not `folder_sql`, the folder the stage writes the row's
      files to (computed from the row's own columns); the view joins the paths back;
    - `live_only` columns (incompressible digests) stay in the live view;
    - no index: rows are ordered by `cluster_by`, and a lookup by one `pair_id` scans one
      compressed column in milliseconds (an ART index on it was a quarter of the file)."""

    name: str
    inputs: tuple[TableSpec, ...]  # the stage tables it is computed from (what makes it stale)
    # row order: a filter on the leading columns touches only the vectors holding its rows, so
    # projecting long strings (paths, instructions) for one class reads a few vectors, not all
    cluster_by: tuple[str, ...] = ()
    path_columns: tuple[str, ...] = ()
    folder_sql: str = "NULL"  # the row's expected folder relative to the data root (SQL over its columns)
    live_only: tuple[str, ...] = ()


# every other name of `view_sql` stays a view (and is live)
MATERIALIZED: dict[str, StoredTable] = {
    PAIRS.name: StoredTable(
        PAIRS.name,
        inputs=(PAIRS, DESCRIPTIONS, INSTRUCTIONS, PAIR_JUDGMENTS, SPLITS, ARTIFACT_AUDIT),
        cluster_by=("category", "split", "pair_id"),
        path_columns=("source_image", "target_image", "mask", "edit_mask"),
        folder_sql=Storage.file_dir_sql(PAIRS, "source", "shard", "pair_id"),  # the pairs stage's item key
        live_only=("output_digest",),
    )
}
LIVE_SUFFIX = "_live"
STORED_SUFFIX = "_stored"
FILES_DIR = "files_dir"  # the stored table's column: the row's folder relative to the data root, if unexpected
INFO_TABLE = "catalog_info"  # one row per catalog name: kind, rows, built_at
INPUTS_TABLE = "catalog_inputs"  # one row: the digest of what the stored tables were built from


def live_name(name: str) -> str:
    """The live view of a stored table (`pairs` -> `pairs_live`)."""
    return name + LIVE_SUFFIX


def stored_name(name: str) -> str:
    """The table holding a stored name's rows (`pairs` -> `pairs_stored`)."""
    return name + STORED_SUFFIX


def _store(con, stored: StoredTable, sql: str, root: Path) -> None:
    prefix = (str(root).rstrip("/") + "/").replace("'", "''")
    live_only = f" EXCLUDE ({', '.join(stored.live_only)})" if stored.live_only else ""
    rows = f"SELECT *{live_only} FROM ({sql})"
    restore = ""
    if stored.path_columns:
        first = stored.path_columns[0]
        folder = f"CASE WHEN starts_with({first}, '{prefix}') THEN parse_dirpath({first}[{len(prefix) + 1}:]) END"
        expected = f"({stored.folder_sql})"

        def name_in_folder(column: str) -> str:  # the full path when the file is elsewhere
            full = f"'{prefix}' || {FILES_DIR} || '/' || parse_filename({column})"
            return f"CASE WHEN {column} = {full} THEN parse_filename({column}) ELSE {column} END AS {column}"

        def joined(column: str) -> str:
            return (
                f"CASE WHEN contains({column}, '/') THEN {column} "
                f"ELSE '{prefix}' || coalesce({FILES_DIR}, {expected}) || '/' || {column} END AS {column}"
            )

        unexpected = f"CASE WHEN {FILES_DIR} IS DISTINCT FROM {expected} THEN {FILES_DIR} END AS {FILES_DIR}"
        rows = (
            f"SELECT *{live_only} REPLACE ({', '.join(map(name_in_folder, stored.path_columns))}, {unexpected}) "
            f"FROM (SELECT *, {folder} AS {FILES_DIR} FROM ({sql}))"
        )
        restore = f" EXCLUDE ({FILES_DIR}) REPLACE ({', '.join(map(joined, stored.path_columns))})"
    order = ", ".join(f'"{column}"' for column in stored.cluster_by)
    table = stored_name(stored.name)
    con.execute(f'CREATE TABLE "{table}" AS {rows}' + (f" ORDER BY {order}" if order else ""))
    con.execute(f'CREATE VIEW "{stored.name}" AS SELECT *{restore} FROM "{table}"')
    con.execute(f'CREATE VIEW "{live_name(stored.name)}" AS {sql}')


def _input_files(storage: Storage, tables: Iterable[TableSpec]) -> list[Path]:
    """Every partition's Parquet file of `tables` (each table once, in its first place; the empty
    schema files aside): what the stored tables are computed from."""
    unique = {table.name: table for table in tables}
    return [
        path
        for table in unique.values()
        for path in sorted(map(Path, glob.glob(storage.table_glob(table))))
        if path != storage.schema_path(table)
    ]


def _inputs_digest(storage: Storage, views: dict[str, str], stored: set[str]) -> str:
    """A digest of everything the stored tables are computed from: every view's SQL (the data
    root's path is in it), the table schemas, and the path, size and mtime_ns of every Parquet
    file of the stored names' input stages. Equal digests: a rebuild would store the same rows."""
    inputs = [
        table
        for name in sorted(stored)
        for table in (MATERIALIZED[name].inputs if name in MATERIALIZED else [t for t in ALL_TABLES if t.name == name])
    ]
    listing = [[str(path), (st := path.stat()).st_size, st.st_mtime_ns] for path in _input_files(storage, inputs)]
    blob = json.dumps([sorted(views.items()), sorted(stored), [str(t.schema) for t in ALL_TABLES], listing])
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _unchanged_counts(path: Path, views: dict[str, str], digest: str) -> dict[str, int] | None:
    """{name: rows} from the catalog at `path` when it was built from inputs of this `digest`."""
    import duckdb

    if not path.exists():
        return None
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error:
        return None
    try:
        if con.execute(f'SELECT digest FROM "{INPUTS_TABLE}"').fetchone() != (digest,):
            return None
        return {name: int((con.execute(f'SELECT count(*) FROM "{name}"').fetchone() or (0,))[0]) for name in views}
    except duckdb.Error:  # a catalog of older code (no inputs table), or one missing a name
        return None
    finally:
        con.close()


def build_catalog(
    storage: Storage,
    path: str | os.PathLike | None = None,
    materialize: Iterable[str] | None = None,
    force: bool = False,
) -> dict[str, int]:
    """(Re)build the catalog atomically (at `path`, default the data root's catalog.duckdb) and
    return {name: row count}. The names in `materialize` (default `MATERIALIZED`) become tables
    holding their rows as of now, plus the live view `<name>_live`; every other name is a view.
    `materialize=()` gives the all-views catalog of the previous design (the benchmark's baseline).
    When the catalog there was built from the same inputs (`_inputs_digest`: no Parquet file of
    the stored tables' stages written, added or removed since, same views and schemas) it is kept
    as it is, unless `force`: a no-op re-run costs a listing of the files, not a rebuild."""
    import duckdb

    stored = set(MATERIALIZED if materialize is None else materialize)
    target = Path(path) if path is not None else storage.catalog_path
    for table in ALL_TABLES:  # rewritten when absent or changed: a schema may have changed since the last build
        schema_path = storage.schema_path(table)
        if not schema_path.exists() or pq.read_schema(schema_path) != table.schema:
            write_parquet(table.schema.empty_table(), schema_path)
    views = view_sql(storage)
    unknown = stored - set(views)
    if unknown:
        raise ValueError(f"cannot materialize {sorted(unknown)}: not a catalog name ({sorted(views)})")
    digest = _inputs_digest(storage, views, stored)
    if not force and (counts := _unchanged_counts(target, views, digest)) is not None:
        return counts
    build_time = datetime.now(timezone.utc)  # before reading any file: a later write makes it stale
    counts = {}
    kinds: dict[str, str] = {}
    with atomic_path(target) as tmp:
        tmp.unlink()  # duckdb wants to create the file itself
        con = duckdb.connect(str(tmp))
        try:
            for name, sql in views.items():
                if name in stored:
                    _store(con, MATERIALIZED.get(name) or StoredTable(name, inputs=()), sql, storage.root)
                    kinds[name], kinds[live_name(name)] = "table", "view"
                else:
                    con.execute(f'CREATE VIEW "{name}" AS {sql}')
                    kinds[name] = "view"
            for name in views:
                row = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
                counts[name] = int(row[0]) if row else 0
            con.execute(f'CREATE TABLE "{INFO_TABLE}" (name VARCHAR, kind VARCHAR, rows BIGINT, built_at TIMESTAMPTZ)')
            con.executemany(
                f'INSERT INTO "{INFO_TABLE}" VALUES (?, ?, ?, ?)',
                [(name, kinds[name], counts.get(name), build_time) for name in sorted(kinds)],
            )
            con.execute(f'CREATE TABLE "{INPUTS_TABLE}" AS SELECT ? AS digest', [digest])
            con.execute("CHECKPOINT")  # everything in the main file: no WAL travels with the rename
        finally:
            con.close()
        wal = Path(str(tmp) + ".wal")
        if wal.exists():
            wal.unlink()
    return counts


def built_at(storage_or_path: Storage | str | os.PathLike) -> datetime | None:
    """When the catalog's stored tables were computed (None: no catalog, or one without catalog_info)."""
    import duckdb

    try:
        con = connect(storage_or_path)
    except FileNotFoundError:
        return None
    try:
        row = con.execute(f'SELECT max(built_at) FROM "{INFO_TABLE}"').fetchone()
    except duckdb.CatalogException:
        return None
    finally:
        con.close()
    return row[0] if row else None


def stale_files(storage: Storage) -> list[Path]:
    """The Parquet files of the stored tables' input stages written after the catalog was built:
    their rows are in the live views (`pairs_live`) but not yet in the stored tables. Every file
    when there is no catalog yet."""
    when = built_at(storage)
    files = _input_files(storage, [table for stored in MATERIALIZED.values() for table in stored.inputs])
    if when is None:
        return files
    cutoff = when.timestamp()
    return [path for path in files if path.stat().st_mtime > cutoff]


def connect(storage_or_path: Storage | str | os.PathLike, read_only: bool = True):
    """Open the catalog (read-only by default: any number of readers, no write lock)."""
    import duckdb

    path = storage_or_path.catalog_path if isinstance(storage_or_path, Storage) else Path(storage_or_path)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no catalog yet; materialize the `catalog` asset (or run `pbi run`)")
    return duckdb.connect(str(path), read_only=read_only)


def query(storage: Storage, sql: str, params: dict | None = None):
    """Run read-only SQL on the catalog (`$name` placeholders bound from `params`); returns a pandas
    DataFrame."""
    con = connect(storage)
    try:
        return con.execute(sql, params).df()
    finally:
        con.close()


def source_summary(storage: Storage, source: str):
    """What one source gave, stage by stage (instances, kept, removal candidates, pairs, test pairs):
    the table `pbi run` prints at its end."""
    sql = (
        "SELECT 'instances' AS what, count(*) AS n FROM candidates WHERE source = $source "
        "UNION ALL SELECT 'candidates kept', count(*) FROM candidates WHERE source = $source AND kept "
        "UNION ALL SELECT 'removal candidates', count(*) FROM removals WHERE source = $source AND status = 'ok' "
        "UNION ALL SELECT 'pairs', count(*) FROM pairs WHERE source = $source "
        "UNION ALL SELECT 'pairs in test split', count(*) FROM pairs WHERE source = $source AND split = 'test'"
    )
    return query(storage, sql, {"source": source})


def run_summary(storage: Storage, source: str) -> str:
    """What `pbi run` prints at its end: `source_summary`, then `evaluation_summary` if any."""
    try:
        text = source_summary(storage, source).to_string(index=False)
    except Exception as exc:  # noqa: BLE001 - a summary must not hide the run's own status
        return f"(no summary: {exc})"
    if (evals := evaluation_summary(storage)) is not None:
        note = "evaluation (model metrics are null, with the reason in the catalog, when their weights are absent):"
        text += f"\n\n{note}\n{evals.to_string(index=False)}"
    return text


def evaluation_summary(storage: Storage):
    """Every evaluation with its checkpoint's steps (the table `pbi run` prints after a training);
    None before the first evaluation."""
    sql = (
        "SELECT e.checkpoint_id, e.benchmark, e.n, round(e.l1, 4) AS l1, round(e.l2, 4) AS l2, e.clip_i, e.dino, "
        "c.steps, c.smoke_model FROM evaluations e JOIN checkpoints c USING (checkpoint_id) ORDER BY 1, 2"
    )
    import duckdb

    try:
        frame = query(storage, sql)
    except (FileNotFoundError, duckdb.Error):  # no catalog, or no evaluation or checkpoint in it yet
        return None
    return frame if len(frame) else None


def read_view(storage: Storage, name: str, where: str = "") -> pa.Table:
    """One catalog name's rows as Arrow, computed in memory straight from the Parquet files (no
    catalog file needed, no lock taken): for a stored table such as `pairs` that is the live join,
    never the catalog's copy, so a stage never depends on when the catalog was last built."""
    import duckdb

    ensure_schema_files(storage)
    sql = view_sql(storage)[name]
    con = duckdb.connect()
    try:
        relation = con.sql(f"SELECT * FROM ({sql}) {('WHERE ' + where) if where else ''}")
        # duckdb >= 2 names it to_arrow_table; 1.x had arrow()
        return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    finally:
        con.close()

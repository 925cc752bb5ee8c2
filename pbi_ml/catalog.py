"""The DuckDB catalog: read-only views over every partition's Parquet files.

The canonical data is the Parquet written per stage and partition (tables/<stage>/<source>/<shard>.parquet).
The catalog file holds only VIEWS over globs of those files, so a partition materialized after the
catalog was built shows up in queries at once, and concurrent runs never write to the same DuckDB
file. The catalog is rebuilt into a temp file and renamed into place (readers never see half a
catalog). Each stage also gets an empty, typed `tables/<stage>/_schema/empty.parquet` so its view
exists (with the right columns) before any partition has been materialized.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from pbi_ml.reasons import LOW_CLASS_SIMILARITY
from pbi_ml.storage import Storage, atomic_path, write_parquet
from pbi_ml.tables import ALL_TABLES, CANDIDATES, CLASS_SCORES, DESCRIPTIONS, INSTRUCTIONS, PAIRS, SPLITS, TableSpec


def _scan(storage: Storage, table: TableSpec) -> str:
    glob = storage.table_glob(table).replace("'", "''")
    return f"read_parquet('{glob}', union_by_name = true)"


def view_sql(storage: Storage) -> dict[str, str]:
    """name -> SELECT statement of every catalog view: one per table (the same name), except that
    `pairs` is joined with descriptions, instructions and splits, and `candidates` shows the final
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


def _pairs_view(storage: Storage) -> str:
    """`pairs`, joined with descriptions, instructions and splits."""
    select = [
        "p.*",
        "d.description",
        "i.instruction_class",
        "i.instruction_vlm_llm",
        "i.instruction_ref",
        "i.instruction_check",
        "s.split",
    ]
    joins = [
        f"LEFT JOIN (SELECT pair_id, description FROM {_scan(storage, DESCRIPTIONS)}) d USING (pair_id)",
        f"LEFT JOIN (SELECT pair_id, instruction_class, instruction_vlm_llm, instruction_ref, instruction_check "
        f"FROM {_scan(storage, INSTRUCTIONS)}) i USING (pair_id)",
        f"LEFT JOIN (SELECT pair_id, split FROM {_scan(storage, SPLITS)}) s USING (pair_id)",
    ]
    return f"SELECT {', '.join(select)} FROM {_scan(storage, PAIRS)} p " + " ".join(joins)


def ensure_schema_files(storage: Storage) -> None:
    """The empty, typed Parquet file of every table, so each view has its columns from the start."""
    for table in ALL_TABLES:
        path = storage.schema_path(table)
        if not path.exists():
            write_parquet(table.schema.empty_table(), path)


def build_catalog(storage: Storage) -> dict[str, int]:
    """(Re)build catalog.duckdb atomically; returns {view: row count}."""
    import duckdb

    for table in ALL_TABLES:  # rewritten: a schema may have changed since the last build
        write_parquet(table.schema.empty_table(), storage.schema_path(table))
    views = view_sql(storage)
    counts = {}
    with atomic_path(storage.catalog_path) as tmp:
        tmp.unlink()  # duckdb wants to create the file itself
        con = duckdb.connect(str(tmp))
        try:
            for name, sql in views.items():
                con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
            for name in views:
                row = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()
                counts[name] = int(row[0]) if row else 0
        finally:
            con.close()
        wal = Path(str(tmp) + ".wal")
        if wal.exists():
            wal.unlink()
    return counts


def connect(storage_or_path: Storage | str | os.PathLike, read_only: bool = True):
    """Open the catalog (read-only by default: any number of readers, no write lock)."""
    import duckdb

    path = storage_or_path.catalog_path if isinstance(storage_or_path, Storage) else Path(storage_or_path)
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no catalog yet; materialize the `catalog` asset (or run `pbi run`)")
    return duckdb.connect(str(path), read_only=read_only)


def query(storage: Storage, sql: str):
    """Run read-only SQL on the catalog; returns a pandas DataFrame."""
    con = connect(storage)
    try:
        return con.execute(sql).df()
    finally:
        con.close()


def read_view(storage: Storage, name: str, where: str = "") -> pa.Table:
    """One catalog view's rows as Arrow, computed in memory straight from the Parquet files
    (no catalog file needed, no lock taken)."""
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

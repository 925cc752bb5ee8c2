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

from pbi_ml.storage import Storage, atomic_path, write_parquet

# view name -> stage table it reads (views that join several stages are defined in EXTRA_VIEWS)
BASE_VIEWS = {
    "source_index": "source_index",
    "candidates": "candidates",
    "removals": "removals",
    "removal_scores": "removal_scores",
}


def stage_schemas() -> dict[str, pa.Schema]:
    """The schema of every stage table, keyed by stage name."""
    from pbi_ml.candidates import CANDIDATE_SCHEMA
    from pbi_ml.sources.base import INDEX_SCHEMA
    from pbi_ml.stages.descriptions import DESCRIPTION_SCHEMA
    from pbi_ml.stages.evaluation import EVALUATION_SCHEMA, SAMPLE_SCHEMA
    from pbi_ml.stages.instructions import INSTRUCTION_SCHEMA
    from pbi_ml.stages.pairs import pair_schema
    from pbi_ml.stages.removals import REMOVAL_SCHEMA
    from pbi_ml.stages.scores import score_schema
    from pbi_ml.stages.splits import SPLIT_SCHEMA
    from pbi_ml.stages.training import CHECKPOINT_SCHEMA

    return {
        "source_index": INDEX_SCHEMA,
        "candidates": CANDIDATE_SCHEMA,
        "removals": REMOVAL_SCHEMA,
        "removal_scores": score_schema(),
        "pairs": pair_schema(),
        "descriptions": DESCRIPTION_SCHEMA,
        "instructions": INSTRUCTION_SCHEMA,
        "splits": SPLIT_SCHEMA,
        "checkpoints": CHECKPOINT_SCHEMA,
        "evaluations": EVALUATION_SCHEMA,
        "evaluation_samples": SAMPLE_SCHEMA,
    }


def _scan(storage: Storage, stage: str) -> str:
    glob = storage.table_glob(stage).replace("'", "''")
    return f"read_parquet('{glob}', union_by_name = true)"


def view_sql(storage: Storage, schemas: dict[str, pa.Schema]) -> dict[str, str]:
    """name -> SELECT statement of every catalog view."""
    views = {name: f"SELECT * FROM {_scan(storage, stage)}" for name, stage in BASE_VIEWS.items()}
    if "pairs" in schemas:
        views["pairs"] = _pairs_view(storage, schemas)
    for stage in schemas:
        if stage not in BASE_VIEWS and stage != "pairs":
            views[stage] = f"SELECT * FROM {_scan(storage, stage)}"
    return views


def _pairs_view(storage: Storage, schemas: dict[str, pa.Schema]) -> str:
    """`pairs`, joined with descriptions, instructions and splits where those stages exist."""
    select = ["p.*"]
    joins = []
    if "descriptions" in schemas:
        select.append("d.description")
        joins.append(f"LEFT JOIN {_scan(storage, 'descriptions')} d USING (pair_id)")
    if "instructions" in schemas:
        select += ["i.instruction_class", "i.instruction_vlm_llm", "i.instruction_ref", "i.instruction_check"]
        joins.append(f"LEFT JOIN {_scan(storage, 'instructions')} i USING (pair_id)")
    if "splits" in schemas:
        select.append("s.split")
        joins.append(f"LEFT JOIN {_scan(storage, 'splits')} s USING (pair_id)")
    return f"SELECT {', '.join(select)} FROM {_scan(storage, 'pairs')} p " + " ".join(joins)


def build_catalog(storage: Storage) -> dict[str, int]:
    """(Re)build catalog.duckdb atomically; returns {view: row count}."""
    import duckdb

    schemas = stage_schemas()
    for stage, schema in schemas.items():
        empty = storage.root / "tables" / stage / "_schema" / "empty.parquet"
        write_parquet(schema.empty_table(), empty)
    views = view_sql(storage, schemas)
    counts = {}
    with atomic_path(storage.catalog_path) as tmp:
        tmp.unlink()  # duckdb wants to create the file itself
        con = duckdb.connect(str(tmp))
        try:
            for name, sql in views.items():
                con.execute(f'CREATE OR REPLACE VIEW "{name}" AS {sql}')
            for name in views:
                counts[name] = con.execute(f'SELECT count(*) FROM "{name}"').fetchone()[0]
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

    schemas = stage_schemas()
    for stage, schema in schemas.items():
        empty = storage.root / "tables" / stage / "_schema" / "empty.parquet"
        if not empty.exists():
            write_parquet(schema.empty_table(), empty)
    sql = view_sql(storage, schemas)[name]
    con = duckdb.connect()
    try:
        relation = con.sql(f"SELECT * FROM ({sql}) {('WHERE ' + where) if where else ''}")
        # duckdb >= 2 names it to_arrow_table; 1.x had arrow()
        return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()
    finally:
        con.close()

"""The DuckDB catalog: views over every partition's Parquet, rebuilt atomically."""

from typing import Any

import dagster as dg

from pbi_assets.assets.instructions import instructions, splits
from pbi_assets.assets.removal import pairs
from pbi_assets.resources import PBIProject
from pbi_ml.catalog import build_catalog


@dg.asset(
    group_name="catalog",
    kinds={"duckdb"},
    deps=[pairs, instructions, splits],
    pool="duckdb_catalog",
    description=(
        "catalog.duckdb under the data root: read-only views (source_index, candidates, removals, "
        "removal_scores, pairs, ...) over the Parquet of ALL partitions. Views read the files at "
        "query time, so newly materialized partitions appear without a rebuild. Written to a temp "
        "file and renamed: concurrent runs never contend for a DuckDB write lock. Query it with "
        '`pbi sql "SELECT ..."` or duckdb.connect(path, read_only=True).'
    ),
)
def catalog(context: dg.AssetExecutionContext, pbi: PBIProject) -> dg.MaterializeResult:
    storage = pbi.storage()
    counts = build_catalog(storage)
    meta: dict[str, Any] = {f"rows_{view}": int(n) for view, n in counts.items()}
    meta["path"] = dg.MetadataValue.path(str(storage.catalog_path))
    meta["example_query"] = dg.MetadataValue.md(
        f'```\npbi sql "SELECT category, count(*) FROM pairs GROUP BY 1 ORDER BY 2 DESC"\n```\n'
        f"or `duckdb -readonly {storage.catalog_path}`"
    )
    return dg.MaterializeResult(metadata=meta)

"""The DuckDB catalog: the joined `pairs` stored as a table, live views over every partition's
Parquet, rebuilt atomically whenever an input partition changes."""

import inspect
from typing import Any

import dagster as dg

from pbi_assets.assets.instructions import descriptions, instructions, pair_judgments, splits
from pbi_assets.assets.removal import artifact_audit, pairs
from pbi_assets.execution import stage_op_tags
from pbi_assets.resources import PBIProject
from pbi_ml.catalog import MATERIALIZED, build_catalog, built_at

# Rebuild when an input partition was materialized since the last rebuild was requested (or the
# catalog was never built), never while a rebuild is queued or running. Unlike eager() it waits
# neither for every upstream partition nor for upstream runs (a long backfill rebuilds it as
# partitions land); the reset is `newly_requested` only, so an update landing during a rebuild
# triggers another. Evaluated by pbi_assets.automation.catalog_automation_sensor (needs the daemon).
CATALOG_AUTOMATION_CONDITION = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since(
        dg.AutomationCondition.newly_requested()
    )
    & ~dg.AutomationCondition.in_progress()
).with_label("rebuild when an input partition changed")


@dg.asset(
    group_name="catalog",
    kinds={"duckdb"},
    op_tags=stage_op_tags("catalog"),
    deps=[pairs, descriptions, instructions, pair_judgments, splits, artifact_audit],
    pool="duckdb_catalog",
    automation_condition=CATALOG_AUTOMATION_CONDITION,
    description=inspect.getdoc(inspect.getmodule(build_catalog)),
)
def catalog(context: dg.AssetExecutionContext, pbi: PBIProject) -> dg.MaterializeResult:
    storage = pbi.storage()
    counts = build_catalog(storage)
    meta: dict[str, Any] = {f"rows_{view}": int(n) for view, n in counts.items()}
    meta["stored_tables"] = ", ".join(MATERIALIZED)
    meta["built_at"] = str(built_at(storage))  # an earlier run's time when no input changed since (kept as is)
    meta["path"] = dg.MetadataValue.path(str(storage.catalog_path))
    meta["example_query"] = dg.MetadataValue.md(
        f'```\npbi sql "SELECT category, count(*) FROM pairs GROUP BY 1 ORDER BY 2 DESC"\n```\n'
        f"or `duckdb -readonly {storage.catalog_path}`"
    )
    return dg.MaterializeResult(metadata=meta)

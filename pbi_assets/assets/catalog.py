"""The DuckDB catalog: the joined `pairs` stored as a table, live views over every partition's
Parquet, rebuilt atomically whenever an input partition changes."""

from typing import Any

import dagster as dg

from pbi_assets.assets.instructions import descriptions, instructions, splits
from pbi_assets.assets.removal import pairs
from pbi_assets.execution import stage_op_tags
from pbi_assets.resources import PBIProject
from pbi_ml.catalog import INFO_TABLE, MATERIALIZED, build_catalog, live_name

# Rebuild when any partition of an input stage (pairs, descriptions, instructions, splits) was
# materialized since the last rebuild was requested, or when the catalog has never been built; never
# while a rebuild is queued or running (the updates seen meanwhile trigger one more after it).
# Unlike AutomationCondition.eager() it does not wait for every upstream partition to exist (a
# catalog over the partitions materialized so far is the normal case) nor for upstream runs in
# progress (during a long backfill it rebuilds as partitions land instead of only at the end).
# The reset is `newly_requested` only, not `since_last_handled`'s "or newly updated": an update
# that lands while a rebuild runs is never absorbed by that rebuild's materialization.
# Evaluated by an automation condition sensor (pbi_assets.automation.catalog_automation_sensor),
# which needs the Dagster daemon (`dagster dev` runs one; in production `dagster-daemon run`).
CATALOG_AUTOMATION_CONDITION = (
    (dg.AutomationCondition.newly_missing() | dg.AutomationCondition.any_deps_updated()).since(
        dg.AutomationCondition.newly_requested()
    )
    & ~dg.AutomationCondition.in_progress()
).with_label("rebuild when an input partition changed")

_STORED = ", ".join(f"`{name}`" for name in MATERIALIZED)
_LIVE = ", ".join(f"`{live_name(name)}`" for name in MATERIALIZED)


@dg.asset(
    group_name="catalog",
    kinds={"duckdb"},
    op_tags=stage_op_tags("catalog"),
    deps=[pairs, descriptions, instructions, splits],
    pool="duckdb_catalog",
    automation_condition=CATALOG_AUTOMATION_CONDITION,
    description=(
        f"catalog.duckdb under the data root. {_STORED}: a table holding the joined rows (pairs + "
        f"descriptions + instructions + splits) of ALL partitions as of this build, so queries answer in "
        f"milliseconds; {_LIVE}: the same join as a live view over the Parquet. Every other name "
        "(source_index, candidates, removals, removal_scores, descriptions, instructions, splits, ...) is "
        "a live view: newly materialized partitions appear in it without a rebuild. Rebuilt automatically "
        "when an input partition changes (automation condition; needs the Dagster daemon), and by "
        f"`pbi run` after the partitions; `{INFO_TABLE}` says when. Written to a temp file and renamed: "
        "concurrent runs never contend for a DuckDB write lock. Query it with "
        '`pbi sql "SELECT ..."` or duckdb.connect(path, read_only=True).'
    ),
)
def catalog(context: dg.AssetExecutionContext, pbi: PBIProject) -> dg.MaterializeResult:
    storage = pbi.storage()
    counts = build_catalog(storage)
    meta: dict[str, Any] = {f"rows_{view}": int(n) for view, n in counts.items()}
    meta["stored_tables"] = ", ".join(MATERIALIZED)
    meta["path"] = dg.MetadataValue.path(str(storage.catalog_path))
    meta["example_query"] = dg.MetadataValue.md(
        f'```\npbi sql "SELECT category, count(*) FROM pairs GROUP BY 1 ORDER BY 2 DESC"\n```\n'
        f"or `duckdb -readonly {storage.catalog_path}`"
    )
    return dg.MaterializeResult(metadata=meta)

"""The code location: `dagster dev -w workspace.yaml` loads `defs` from here."""

from __future__ import annotations

import dagster as dg

from pbi_assets import automation
from pbi_assets.assets.catalog import catalog
from pbi_assets.assets.instructions import descriptions, instructions, pair_judgments, splits
from pbi_assets.assets.removal import artifact_audit, class_scores, pairs, removal_scores, removals
from pbi_assets.assets.sources import candidates, source_index
from pbi_assets.assets.training import checkpoint, evaluation, exports
from pbi_assets.checks import ALL_CHECKS
from pbi_assets.execution import executor_for
from pbi_assets.partitions import PROJECT
from pbi_assets.resources import PBIProject

# per source x shard, in graph order
PARTITIONED_ASSETS = [source_index, candidates, class_scores, removals, removal_scores, pairs, artifact_audit]
PARTITIONED_ASSETS += [descriptions, instructions, pair_judgments, splits]
# over all partitions, in graph order
UNPARTITIONED_ASSETS = [catalog, exports, checkpoint, evaluation]

defs = dg.Definitions(
    assets=[*PARTITIONED_ASSETS, *UNPARTITIONED_ASSETS],
    asset_checks=ALL_CHECKS,
    jobs=[automation.retraining_job],
    schedules=[automation.weekly_retraining_schedule],
    sensors=[automation.train_split_growth_sensor, automation.catalog_automation_sensor],
    resources={"pbi": PBIProject()},
    # every job and backfill the instance launches: `executor:` in pbi.yaml / $PBI_EXECUTOR (pbi_ml.cluster)
    executor=executor_for(PROJECT.executor),
)

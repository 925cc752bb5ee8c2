"""Retraining: a named job (checkpoint + evaluation), a weekly schedule, and a growth sensor."""

import os

import dagster as dg

from pbi_assets.assets.catalog import catalog
from pbi_assets.assets.training import checkpoint, evaluation
from pbi_assets.resources import PBIProject

retraining_job = dg.define_asset_job(
    "retraining_job",
    selection=dg.AssetSelection.assets(checkpoint, evaluation),
    description="Train a new checkpoint on the current train split, then evaluate it.",
)

weekly_retraining_schedule = dg.ScheduleDefinition(
    name="weekly_retraining",
    job=retraining_job,
    cron_schedule="0 3 * * 1",  # Mondays 03:00
    execution_timezone="UTC",
    description="Retrain every week, whether or not the data changed (a ScheduleDefinition, not on_cron).",
)

GROWTH_ENV = "PBI_RETRAIN_GROWTH"
DEFAULT_GROWTH = 0.2


@dg.sensor(
    name="train_split_growth_sensor",
    job=retraining_job,
    minimum_interval_seconds=600,
    description=(
        "Requests retraining when the train split has grown by a fraction (default 0.2, env "
        "PBI_RETRAIN_GROWTH) since the pairs count the latest checkpoint was trained on; also when "
        "there is no checkpoint yet but train pairs exist."
    ),
)
def train_split_growth_sensor(context: dg.SensorEvaluationContext, pbi: PBIProject):
    from pbi_ml.stages.training import current_train_pair_count, last_train_pair_count

    storage = pbi.storage()
    growth = float(os.environ.get(GROWTH_ENV, DEFAULT_GROWTH))
    current = current_train_pair_count(storage)
    last = last_train_pair_count(storage)
    if current == 0:
        return dg.SkipReason("no train pairs yet")
    if last is not None and current < last * (1 + growth):
        return dg.SkipReason(f"train split has {current} pairs; last checkpoint saw {last}; waiting for +{growth:.0%}")
    return dg.RunRequest(
        run_key=f"train-pairs-{current}",
        tags={"pbi/trigger": "train_split_growth", "pbi/train_pairs": str(current)},
    )


# the catalog's automation condition sensor (its condition: pbi_assets/assets/catalog.py)
CATALOG_SENSOR_INTERVAL_S = 60

catalog_automation_sensor = dg.AutomationConditionSensorDefinition(
    "catalog_automation_sensor",
    target=dg.AssetSelection.assets(catalog),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=CATALOG_SENSOR_INTERVAL_S,
    description=(
        "Every minute, rebuilds catalog.duckdb when a partition of pairs, descriptions, instructions, "
        "pair_judgments or splits was materialized since the last rebuild was requested. RUNNING by default (the catalog must "
        "not stay stale); needs the Dagster daemon (`dagster dev` runs one; in production `dagster-daemon run`)."
    ),
)

"""Run the real Dagster assets in-process on a data root of the test's choosing."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from pbi_assets.definitions import PARTITIONED_ASSETS, UNPARTITIONED_ASSETS, defs
from pbi_assets.partitions import PROJECT
from pbi_assets.resources import PBIProject

DATA_PLANE = [
    a
    for a in PARTITIONED_ASSETS
    if a.key.to_user_string() in ("source_index", "candidates", "class_scores", "removals", "removal_scores", "pairs")
]


def everything():
    return list(defs.assets) + list(defs.asset_checks)


def materialize_partition(
    source: str, shard: str, data_root: Path, selection=None, run_config=None, raise_on_error=True
):
    return dg.materialize(
        everything(),
        selection=selection or PARTITIONED_ASSETS,
        partition_key=dg.MultiPartitionKey({"source": source, "shard": shard}),
        resources={"pbi": PBIProject(data_root=str(data_root))},
        run_config=run_config or {},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )


def materialize_source(source: str, data_root: Path, selection=None, run_config=None):
    results = [materialize_partition(source, shard, data_root, selection, run_config) for shard in PROJECT.shard_keys]
    return results


def materialize_unpartitioned(data_root: Path, selection=None, run_config=None, raise_on_error=True):
    return dg.materialize(
        everything(),
        selection=selection or UNPARTITIONED_ASSETS,
        resources={"pbi": PBIProject(data_root=str(data_root))},
        run_config=run_config or {},
        instance=dg.DagsterInstance.ephemeral(),
        raise_on_error=raise_on_error,
    )


def check_results(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def metadata_of(result, asset: str) -> dict:
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == asset:
            return {k: getattr(v, "value", v) for k, v in event.materialization.metadata.items()}
    raise KeyError(asset)


def run_everything(source: str, root: Path, run_config=None):
    """All partitioned assets for every shard of `source`, then the unpartitioned ones."""
    partitioned = [materialize_partition(source, shard, root, run_config=run_config) for shard in PROJECT.shard_keys]
    unpartitioned = materialize_unpartitioned(root, run_config=run_config)
    return partitioned, unpartitioned

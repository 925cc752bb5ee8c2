"""Asset checks. Checks of partitioned assets share the asset's partitions definition, so a check
runs on the partition just materialized instead of loading them all."""

import warnings

import dagster as dg

from pbi_assets.assets.catalog import catalog
from pbi_assets.assets.removal import pairs
from pbi_assets.assets.training import exports
from pbi_assets.partitions import partition_of, source_shard_partitions
from pbi_assets.resources import PBIProject
from pbi_ml import validation

# partitions_def on asset checks is marked "preview" in dagster 1.13; it is what keeps a check on
# one partition instead of all of them (ARCHITECTURE.md), so we use it knowingly
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


def _result(passed: bool, details: dict) -> dg.AssetCheckResult:
    meta = {k: (dg.MetadataValue.json(v) if isinstance(v, list) else v) for k, v in details.items()}
    return dg.AssetCheckResult(passed=passed, metadata=meta)


@dg.asset_check(asset=pairs, partitions_def=source_shard_partitions, description="Every pair file exists and decodes.")
def pair_files_decode(context: dg.AssetCheckExecutionContext, pbi: PBIProject) -> dg.AssetCheckResult:
    part = partition_of(context)
    return _result(*validation.check_pair_files(pbi.storage(), part.source, part.shard))


@dg.asset_check(
    asset=pairs,
    partitions_def=source_shard_partitions,
    description="Outside the dilated mask, the object-removed image equals the original pixel for pixel.",
)
def pairs_equal_outside_mask(context: dg.AssetCheckExecutionContext, pbi: PBIProject) -> dg.AssetCheckResult:
    part = partition_of(context)
    return _result(*validation.check_pairs_equal_outside_mask(pbi.storage(), part.source, part.shard))


@dg.asset_check(
    asset=pairs,
    partitions_def=source_shard_partitions,
    description="No pair comes from a rejected instance or a removal candidate that did not pass.",
)
def pairs_from_passing_candidates(context: dg.AssetCheckExecutionContext, pbi: PBIProject) -> dg.AssetCheckResult:
    part = partition_of(context)
    return _result(*validation.check_pairs_from_passing_candidates(pbi.storage(), part.source, part.shard))


@dg.asset_check(asset=catalog, description="Every file path the catalog lists exists on disk.")
def catalog_files_exist(pbi: PBIProject) -> dg.AssetCheckResult:
    return _result(*validation.check_catalog_files_exist(pbi.storage()))


@dg.asset_check(asset=exports, description="No image is in both the train and the test split (all sources).")
def splits_disjoint(pbi: PBIProject) -> dg.AssetCheckResult:
    return _result(*validation.check_splits_disjoint(pbi.storage()))


ALL_CHECKS = [pair_files_decode, pairs_equal_outside_mask, pairs_from_passing_candidates]
ALL_CHECKS += [catalog_files_exist, splits_disjoint]

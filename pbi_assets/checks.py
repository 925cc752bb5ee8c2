"""Asset checks. Checks of partitioned assets share the asset's partitions definition, so a check
runs on the partition just materialized instead of loading them all."""

import warnings

import dagster as dg

from pbi_assets.assets.catalog import catalog
from pbi_assets.assets.removal import artifact_audit, pairs
from pbi_assets.assets.training import exports
from pbi_assets.partitions import partition_of, source_shard_partitions
from pbi_assets.resources import PBIProject
from pbi_ml import audit, validation
from pbi_ml.config import ArtifactAuditConfig

# partitions_def on asset checks is marked "preview" in dagster 1.13; it is what keeps a check on
# one partition instead of all of them (ARCHITECTURE.md), so we use it knowingly
warnings.filterwarnings("ignore", category=dg.PreviewWarning, message=".*partitions_def on an AssetCheckSpec.*")


def _result(passed: bool, details: dict, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
    kinds = {list: dg.MetadataValue.json, str: dg.MetadataValue.md}
    meta = {k: kinds[type(v)](v) if type(v) in kinds else v for k, v in details.items()}
    return dg.AssetCheckResult(passed=passed, metadata=meta, severity=severity)


def shard_check(name, check, description, asset=pairs, config_class=None, severity=dg.AssetCheckSeverity.ERROR):
    """A check of one partition of `asset`: `check(storage, source, shard[, its stage config])` -> (passed, details)."""

    @dg.asset_check(name=name, asset=asset, partitions_def=source_shard_partitions, description=description)
    def _check(context: dg.AssetCheckExecutionContext, pbi: PBIProject) -> dg.AssetCheckResult:
        part = partition_of(context)
        config = [pbi.stage_config(asset.key.to_user_string(), config_class)] if config_class else []
        return _result(*check(pbi.storage(), part.source, part.shard, *config), severity=severity)

    return _check


pair_files_decode = shard_check("pair_files_decode", validation.check_pair_files, "Every pair file exists and decodes.")
pairs_equal_outside_mask = shard_check(
    "pairs_equal_outside_mask",
    validation.check_pairs_equal_outside_mask,
    "Outside the dilated mask, the object-removed image equals the original pixel for pixel.",
)
pairs_from_passing_candidates = shard_check(
    "pairs_from_passing_candidates",
    validation.check_pairs_from_passing_candidates,
    "No pair comes from a rejected instance or a removal candidate that did not pass.",
)

artifact_audit_auc = shard_check(
    "artifact_audit_auc",
    audit.check_artifact_auc,
    "Warns when a classifier tells the inpainted regions from the real ones: ROC AUC above max_auc.",
    asset=artifact_audit,
    config_class=ArtifactAuditConfig,
    severity=dg.AssetCheckSeverity.WARN,
)


@dg.asset_check(asset=catalog, description="Every file path the catalog lists exists on disk.")
def catalog_files_exist(pbi: PBIProject) -> dg.AssetCheckResult:
    return _result(*validation.check_catalog_files_exist(pbi.storage()))


@dg.asset_check(asset=exports, description="No image is in both the train and the test split (all sources).")
def splits_disjoint(pbi: PBIProject) -> dg.AssetCheckResult:
    return _result(*validation.check_splits_disjoint(pbi.storage()))


ALL_CHECKS = [pair_files_decode, pairs_equal_outside_mask, pairs_from_passing_candidates, artifact_audit_auc]
ALL_CHECKS += [catalog_files_exist, splits_disjoint]

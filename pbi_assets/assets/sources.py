"""Sources: the annotation index of each partition, and the pre-removal candidate filters."""

import inspect

import dagster as dg

from pbi_assets.assets.stage_asset import StageAsset, stage_asset
from pbi_assets.execution import stage_op_tags
from pbi_assets.metadata import result_metadata
from pbi_assets.partitions import partition_of, source_shard_partitions
from pbi_assets.resources import PBIProject
from pbi_ml.config import CandidateConfig, SourceIndexConfig
from pbi_ml.stages.candidates import run_candidates
from pbi_ml.stages.source_index import run_source_index
from pbi_ml.tables import CANDIDATES


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="sources",
    kinds={"python", "parquet"},
    op_tags=stage_op_tags("source_index"),
    description=inspect.getdoc(inspect.getmodule(run_source_index)),
)
def source_index(context: dg.AssetExecutionContext, pbi: PBIProject) -> dg.MaterializeResult:
    part = partition_of(context)
    project = pbi.project()
    result = run_source_index(
        pbi.storage(), project.source(part.source), part.shard, SourceIndexConfig(num_shards=project.num_shards)
    )
    return dg.MaterializeResult(metadata=result_metadata(result))


candidates = stage_asset(
    StageAsset(
        name=CANDIDATES.name,
        run=run_candidates,
        config_class=CandidateConfig,
        group="sources",
        deps=[source_index],
        histograms={"area_fraction": "mask area / image area"},
    )
)

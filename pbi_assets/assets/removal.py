"""Removal: inpaint each candidate K times, score the candidates, blend the chosen one into a pair."""

import dagster as dg

from pbi_assets.assets.gpu import GPU_POOL, GPU_TAGS, on_a_device
from pbi_assets.assets.sources import candidates
from pbi_assets.execution import stage_op_tags
from pbi_assets.metadata import progress_logger, result_metadata
from pbi_assets.partitions import partition_of, source_shard_partitions
from pbi_assets.resources import PBIProject
from pbi_assets.run_config import ClassScoresRunConfig, PairsRunConfig, RemovalRunConfig, ScoringRunConfig
from pbi_ml.config import ClassFilterConfig, PairConfig, RemovalConfig, ScoringConfig
from pbi_ml.stages.class_scores import run_class_scores
from pbi_ml.stages.pairs import run_pairs
from pbi_ml.stages.removals import run_removals
from pbi_ml.stages.scores import run_scores
from pbi_ml.tables import CLASS_SCORES, PAIRS, REMOVAL_SCORES, REMOVALS


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="sources",
    kinds={"pytorch", "parquet"},
    deps=[candidates],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("class_scores"),
    description=(
        "The paper's third pre-removal filter (§3.1, Fig. S14), before any inpainting: CLIP similarity "
        "of each kept candidate's isolated object with 'a photo of a <class>' (clip_class_sim); under "
        "min_class_sim (default 0.20, calibrate) the object is rejected as low_class_similarity (a "
        "blurred or occluded view). Backend `off` (default, no weights) skips the filter and says so "
        "in every row (clip_class_sim null with the reason); `clip` is the paper's recipe."
    ),
)
def class_scores(
    context: dg.AssetExecutionContext, pbi: PBIProject, config: ClassScoresRunConfig
) -> dg.MaterializeResult:
    part = partition_of(context)
    with on_a_device(context, pbi, pbi.stage_config(CLASS_SCORES.name, ClassFilterConfig, config)) as step:
        stage_config = step.config
        result = run_class_scores(
            pbi.storage(),
            pbi.source(part.source),
            part.shard,
            stage_config,
            progress=progress_logger(context, "objects scored against their class"),
        )
    meta = result_metadata(result, histograms={"clip_class_sim": "CLIP sim(isolated object, class)"})
    meta.update(step.metadata)
    meta["backend"] = stage_config.backend
    if stage_config.backend == "off":
        meta["filter"] = "skipped: no CLIP weights (class_scores.backend: off); set backend: clip to apply it"
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="removal",
    kinds={"pytorch", "parquet"},
    deps=[class_scores],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("removals"),
    description=(
        "K inpainted candidates per kept object not rejected by class_scores (default 3), masks dilated first. Backend `opencv` "
        "(default, CPU: Telea / Navier-Stokes at several radii) or `diffusers` (the paper's recipe: "
        "runwayml/stable-diffusion-inpainting, prompt 'a photo of a background, a photo of an empty "
        "place', negative 'an object, a <class>', 10 steps, seeds seed+k). Resumable per object."
    ),
)
def removals(context: dg.AssetExecutionContext, pbi: PBIProject, config: RemovalRunConfig) -> dg.MaterializeResult:
    part = partition_of(context)
    with on_a_device(context, pbi, pbi.stage_config(REMOVALS.name, RemovalConfig, config)) as step:
        stage_config = step.config
        result = run_removals(
            pbi.storage(),
            pbi.source(part.source),
            part.shard,
            stage_config,
            progress=progress_logger(context, "objects inpainted"),
        )
    meta = result_metadata(result)
    meta.update(step.metadata)
    meta["backend"] = stage_config.backend
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="removal",
    kinds={"pytorch", "parquet"},
    deps=[removals],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("removal_scores"),
    description=(
        "One row per removal candidate with the three filters: consensus across candidates, removal "
        "verification against the class, importance of the edit; then passed / reject_reason / "
        "chosen (the passing candidate with the lowest removal score). Backend `stats` (default, "
        "pixel statistics, CLIP columns null with the reason) or `clip` (open_clip)."
    ),
)
def removal_scores(
    context: dg.AssetExecutionContext, pbi: PBIProject, config: ScoringRunConfig
) -> dg.MaterializeResult:
    part = partition_of(context)
    with on_a_device(context, pbi, pbi.stage_config(REMOVAL_SCORES.name, ScoringConfig, config)) as step:
        scoring = step.config
        result = run_scores(
            pbi.storage(),
            pbi.source(part.source),
            part.shard,
            scoring,
            progress=progress_logger(context, "objects scored"),
        )
    meta = result_metadata(
        result,
        histograms={
            "stats_consensus_std": "pixel std across candidates (stats)",
            "stats_boundary_contrast": "region vs surroundings contrast (stats)",
            "stats_texture_ratio": "texture inside / around the fill (stats; low = smear)",
            "clip_removal_sim": "CLIP sim(region, class) after removal",
            "clip_consensus_std": "CLIP embedding std across candidates",
        },
    )
    meta["backend"] = scoring.backend
    meta.update(step.metadata)
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="removal",
    kinds={"python", "parquet"},
    op_tags=stage_op_tags("pairs"),
    deps=[removal_scores],
    description=(
        "Object-removal pairs: the chosen candidate alpha-blended into the original through the "
        "feathered dilated mask (lossless PNG; outside the dilated mask the object-removed image "
        "equals the original pixel for pixel), the original, the mask, the 3x3 object_location."
    ),
)
def pairs(context: dg.AssetExecutionContext, pbi: PBIProject, config: PairsRunConfig) -> dg.MaterializeResult:
    part = partition_of(context)
    pair_config = pbi.stage_config(PAIRS.name, PairConfig, config)
    result = run_pairs(
        pbi.storage(), pbi.source(part.source), part.shard, pair_config, progress=progress_logger(context, "pairs made")
    )
    meta = result_metadata(result, histograms={"area_fraction": "mask area / image area"})
    return dg.MaterializeResult(metadata=meta)

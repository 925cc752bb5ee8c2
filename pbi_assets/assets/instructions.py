"""Descriptions of the removed objects, "add" instructions, and the train/test split."""

import dagster as dg

from pbi_assets.assets.gpu import GPU_POOL, GPU_TAGS, on_a_device
from pbi_assets.assets.removal import pairs
from pbi_assets.execution import stage_op_tags
from pbi_assets.metadata import progress_logger, result_metadata
from pbi_assets.partitions import partition_of, source_shard_partitions
from pbi_assets.resources import PBIProject
from pbi_assets.run_config import DescriptionsRunConfig, InstructionsRunConfig, SplitsRunConfig
from pbi_ml.config import SplitConfig
from pbi_ml.tables import DESCRIPTIONS, INSTRUCTIONS, SPLITS


def _markdown_examples(rows: list[dict], columns: list[str], n: int = 5) -> dg.MetadataValue:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:n]:
        lines.append("| " + " | ".join(str(row.get(c) or "").replace("|", "/")[:80] for c in columns) + " |")
    return dg.MetadataValue.md("\n".join(lines))


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="instructions",
    kinds={"pytorch", "parquet"},
    deps=[pairs],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("descriptions"),
    description=(
        "What each removed object looks like. The describer sees the original photo with everything "
        "but the object masked out. Backend `pixels` (default, no weights: colour names, size, shape "
        "measured under the mask) or `vlm` (transformers image-text-to-text, SPEC's prompt; CogVLM "
        "only with trust_remote_code)."
    ),
)
def descriptions(
    context: dg.AssetExecutionContext, pbi: PBIProject, config: DescriptionsRunConfig
) -> dg.MaterializeResult:
    from pbi_ml.describe import DescribeConfig
    from pbi_ml.stages.descriptions import run_descriptions

    part = partition_of(context)
    with on_a_device(context, pbi, pbi.stage_config(DESCRIPTIONS.name, DescribeConfig, config)) as step:
        stage_config = step.config
        result = run_descriptions(
            pbi.storage(),
            pbi.source(part.source),
            part.shard,
            stage_config,
            progress=progress_logger(context, "pairs described"),
        )
    meta = result_metadata(result)
    meta.update(step.metadata)
    meta["examples"] = _markdown_examples(result.table.to_pylist(), ["category", "description", "error"])
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="instructions",
    kinds={"pytorch", "parquet"},
    deps=[descriptions],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("instructions"),
    description=(
        "Three instruction kinds per pair (PIPE columns): class template 'add a <class>', the "
        "description rewritten as an instruction (backend `templates` by default, or `llm` with the "
        "paper's 5-shot prompt), and 'add a <referring expression>' when a refs file is configured. "
        "Beyond the paper: an instruction check (lexical + MiniLM similarity) replaces rewrites that "
        "do not name their object, keeping the reason. The location phrase is added at training time."
    ),
)
def instructions(
    context: dg.AssetExecutionContext, pbi: PBIProject, config: InstructionsRunConfig
) -> dg.MaterializeResult:
    from pbi_ml.instruct import InstructConfig
    from pbi_ml.stages.instructions import run_instructions

    part = partition_of(context)
    with on_a_device(context, pbi, pbi.stage_config(INSTRUCTIONS.name, InstructConfig, config)) as step:
        stage_config = step.config
        result = run_instructions(
            pbi.storage(),
            pbi.source(part.source),
            part.shard,
            stage_config,
            progress=progress_logger(context, "pairs instructed"),
        )
    meta = result_metadata(result, histograms={"instruction_check_similarity": "instruction check similarity (MiniLM)"})
    meta.update(step.metadata)
    meta["examples"] = _markdown_examples(
        result.table.to_pylist(),
        ["instruction_class", "instruction_vlm_llm", "instruction_ref", "instruction_check", "object_location"],
    )
    return dg.MaterializeResult(metadata=meta)


@dg.asset(
    partitions_def=source_shard_partitions,
    group_name="instructions",
    kinds={"python", "parquet"},
    op_tags=stage_op_tags("splits"),
    deps=[pairs],
    description=(
        "train / test per pair, by image: sources with role: test go to test, an image that appears in "
        "any test source goes to test everywhere, the rest by a seeded hash of the image id "
        "(test_fraction, default 0.05, per-source override; the demo uses 0.3; 0 plus a role: test source reproduces the paper)."
    ),
)
def splits(context: dg.AssetExecutionContext, pbi: PBIProject, config: SplitsRunConfig) -> dg.MaterializeResult:
    from pbi_ml.stages.splits import run_splits

    part = partition_of(context)
    stage_config = pbi.stage_config(SPLITS.name, SplitConfig, config)
    result = run_splits(pbi.storage(), pbi.source(part.source), part.shard, stage_config, project=pbi.project())
    return dg.MaterializeResult(metadata=result_metadata(result))

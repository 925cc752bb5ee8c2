"""Exports, the trained checkpoint, and its evaluation (unpartitioned: they read all partitions).

The checkpoint runs `pbi_assets.train_entry` on 1..N processes through `dg.PipesSubprocessClient`
(pbi_ml.train.launch); rank 0's log comes back through Pipes, its checkpoints row in a file.
"""

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from pbi_assets.assets.catalog import catalog
from pbi_assets.assets.gpu import GPU_POOL, GPU_TAGS, on_a_device
from pbi_assets.assets.stage_asset import stage_description
from pbi_assets.execution import stage_op_tags
from pbi_assets.metadata import thumbnails_markdown
from pbi_assets.resources import PBIProject
from pbi_assets.run_config import stage_run_config
from pbi_ml.export import ExportConfig
from pbi_ml.plots import histogram_text, loss_curve_text
from pbi_ml.stages.evaluation import METRICS, EvaluationConfig, run_evaluation
from pbi_ml.stages.exports import run_exports
from pbi_ml.stages.training import run_training
from pbi_ml.train import TrainConfig

# checkpoints-table columns shown as they are
CHECKPOINT_FIELDS = "checkpoint_id recipe smoke_model train_pairs steps samples_per_second wall_time_s".split()
CHECKPOINT_FIELDS += "world_size effective_batch_size latents".split()
SMOKE_WARNING = "SMOKE MODEL: tiny random architecture trained a few steps on CPU; not a useful editor."
RECIPE = (str | None, Field(default=None, description="smoke (default: tiny CPU model) or paper (the paper's recipe)"))
ExportsRunConfig = stage_run_config("ExportsRunConfig", ExportConfig)
CheckpointRunConfig = stage_run_config("CheckpointRunConfig", TrainConfig, extra={"recipe": RECIPE})
EvaluationRunConfig = stage_run_config("EvaluationRunConfig", EvaluationConfig)


@dg.asset(
    group_name="training",
    kinds={"parquet", "huggingface"},
    op_tags=stage_op_tags("exports"),
    deps=[catalog],
    description=stage_description(run_exports, ExportConfig, "exports"),
)
def exports(context: dg.AssetExecutionContext, pbi: PBIProject, config: ExportsRunConfig) -> dg.MaterializeResult:  # type: ignore[valid-type]
    stage_config = pbi.stage_config("exports", ExportConfig, config)
    result = run_exports(pbi.storage(), stage_config, project=pbi.project())
    directory = Path(str(result.path))
    meta: dict[str, Any] = {k: int(v) for k, v in result.counts.items()}
    meta["path"] = dg.MetadataValue.path(str(directory))
    meta["files"] = dg.MetadataValue.json(result.extra["files"])
    meta["dataset_card"] = dg.MetadataValue.md((directory / "README.md").read_text()[:6000])
    return dg.MaterializeResult(metadata=meta)


def skipped_result(context: dg.AssetExecutionContext, why: str, **numbers: int) -> dg.MaterializeResult:
    """Empty is not failure: the step succeeds, and its log and metadata say why it did nothing."""
    context.log.warning(f"skipped: {why}")
    return dg.MaterializeResult(metadata={"skipped": why, **numbers})


@dg.asset(
    group_name="training",
    kinds={"pytorch", "diffusers"},
    deps=[exports],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("checkpoint"),
    description=stage_description(run_training, TrainConfig, "checkpoint"),
)
def checkpoint(context: dg.AssetExecutionContext, pbi: PBIProject, config: CheckpointRunConfig) -> dg.MaterializeResult:  # type: ignore[valid-type]
    from pbi_ml.stages.training import NO_TRAIN_PAIRS, train_config_for, training_devices, training_examples
    from pbi_ml.train.launch import launch_command, read_result, write_spec

    recipe, train_config = train_config_for(pbi.stage_values("checkpoint", config))
    storage = pbi.storage()
    if not training_examples(storage):
        return skipped_result(context, NO_TRAIN_PAIRS, train_pairs=0)
    with (
        training_devices(train_config, pbi.project().devices, pbi.lease_dir(), context.log.info) as held,
        tempfile.TemporaryDirectory(prefix="pbi-train-") as folder,
    ):
        context.log.info(f"devices: {held.lease}")
        write_spec(folder, storage, recipe, train_config, held.device)
        command = launch_command("pbi_assets.train_entry", folder, held.world_size)
        context.log.info(f"launching {held.world_size} training process(es): {' '.join(command)}")
        with warnings.catch_warnings():  # Dagster's Pipes session calls a preview API of its own: nothing to act on
            warnings.simplefilter("ignore", dg.PreviewWarning)
            dg.PipesSubprocessClient().run(context=context, command=command, env={"PYTHONUNBUFFERED": "1", **held.env})
        row, counts = read_result(folder)
    metadata = checkpoint_metadata(row, counts)
    return dg.MaterializeResult(metadata={**metadata, "device": held.devices, "device_lease": held.lease})


def checkpoint_metadata(row: dict, counts: dict) -> dict[str, Any]:
    """The `checkpoint` materialization's metadata from its checkpoints-table row and the stage's
    counts (latent cache use)."""
    curve = json.loads(row["loss_curve"])
    metadata: dict[str, Any] = {name: row[name] for name in CHECKPOINT_FIELDS}
    metadata.update(
        pipeline_dir=dg.MetadataValue.path(row["pipeline_dir"]),
        final_loss=row["final_loss"] if row["final_loss"] is not None else float("nan"),
        resumed_from_step=row["resumed_from_step"] if row["resumed_from_step"] is not None else -1,
        **counts,  # latent cache use, the world size it resumed from
        loss_curve=dg.MetadataValue.md(loss_curve_text(curve)),
        loss_curve_json=dg.MetadataValue.json(curve),
        loss_histogram=dg.MetadataValue.md(histogram_text([loss for _, loss in curve], title="training loss")),
    )
    if row["smoke_model"]:
        metadata["warning"] = SMOKE_WARNING
    return metadata


@dg.asset(
    group_name="training",
    kinds={"pytorch", "parquet"},
    deps=[checkpoint],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("evaluation"),
    description=stage_description(run_evaluation, EvaluationConfig, "evaluation"),
)
def evaluation(context: dg.AssetExecutionContext, pbi: PBIProject, config: EvaluationRunConfig) -> dg.MaterializeResult:  # type: ignore[valid-type]
    with on_a_device(context, pbi, pbi.stage_config("evaluation", EvaluationConfig, config)) as step:
        stage_config = step.config
        result = run_evaluation(pbi.storage(), stage_config)
    if result.skipped:
        return skipped_result(context, result.skipped)
    ckpt = result.extra["checkpoint"]
    meta: dict[str, Any] = {"checkpoint_id": ckpt["checkpoint_id"], "smoke_model": bool(ckpt["smoke_model"])}
    meta.update(step.metadata)
    meta.update(result.counts)  # per benchmark: samples, edits made this run (0: all kept), edits failed
    for row in result.table.to_pylist():
        meta[f"{row['benchmark']}/n"] = row["n"]
        for m in METRICS:
            value = row[m]
            meta[f"{row['benchmark']}/{m}"] = float(value) if value is not None else f"null: {row[f'{m}_null_reason']}"
    grid = thumbnails_markdown(result.samples, max_side=96, limit=9)
    meta["grid"] = grid if result.samples else dg.MetadataValue.md("_no test samples_")
    return dg.MaterializeResult(metadata=meta)

"""Exports, the trained checkpoint, and its evaluation (unpartitioned: they read all partitions).

The checkpoint trains as diffusers does, one script for 1..N processes: whatever its world size,
the step runs `pbi_assets.train_entry` through `dg.PipesSubprocessClient` on the devices
`pbi_ml.stages.training.training_devices` gives it (`python -m` for one process, `accelerate
launch --multi_gpu` for several). Rank 0's log lines come back through Pipes, its checkpoints row
in a result file the step turns into the materialization's metadata (loss curve included).
"""

import dataclasses
import json
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import dagster as dg

from pbi_assets.assets.catalog import catalog
from pbi_assets.assets.gpu import GPU_POOL, GPU_TAGS, on_a_device
from pbi_assets.execution import stage_op_tags
from pbi_assets.metadata import thumbnails_markdown
from pbi_assets.plots import histogram_text, loss_curve_text
from pbi_assets.resources import PBIProject
from pbi_assets.run_config import CheckpointRunConfig, EvaluationRunConfig, ExportsRunConfig

CHECKPOINT_FIELDS = (  # checkpoints-table columns shown as they are
    "checkpoint_id",
    "recipe",
    "smoke_model",
    "train_pairs",
    "steps",
    "samples_per_second",
    "wall_time_s",
    "world_size",
    "effective_batch_size",
    "latents",
)
SMOKE_WARNING = "SMOKE MODEL: tiny random architecture trained a few steps on CPU; not a useful editor."


@dg.asset(
    group_name="training",
    kinds={"parquet", "huggingface"},
    op_tags=stage_op_tags("exports"),
    deps=[catalog],
    description=(
        "Every pair as Hugging Face Parquet datasets per split: the PIPE release schema (source_img, "
        "target_img, Instruction_VLM-LLM, Instruction_Class, Instruction_Ref_Dataset, object_location, "
        "target_img_dataset, img_id, ann_id; masks in a separate table), diffusers' "
        "train_instruct_pix2pix.py schema (input_image, edit_prompt, edited_image, plus pair_id and mask) "
        "and the reverse removal pairs in that schema (remove_pix2pix: original, 'remove the ...', "
        "object removed); sharded by size, with a README.md dataset card (one `datasets` config per "
        "file set, counts, classes, filter statistics)."
    ),
)
def exports(context: dg.AssetExecutionContext, pbi: PBIProject, config: ExportsRunConfig) -> dg.MaterializeResult:
    from pbi_ml.export import ExportConfig
    from pbi_ml.stages.exports import run_exports

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
    description=(
        "InstructPix2Pix 'add an object' model trained on the train split (UNet conv_in widened to 8 "
        "channels, zero-initialised; VAE and text encoder frozen; accelerate). recipe `smoke` (default: "
        "a tiny random model a few steps on CPU - NOT a useful editor, labelled smoke_model) or `paper` "
        "(docs/method.md#training: SD 1.5 init, 256 px, Adam 5e-5, grad-clip 1, 5/5/5 % conditioning dropout, location "
        "phrase p=0.25, cached latents). One process per leased device (or num_processes), launched "
        "through Dagster Pipes (accelerate launch for several; their logs come back through Pipes), the "
        "effective batch kept. Checkpoints every N steps; resumes after a crash; saves a "
        "diffusers StableDiffusionInstructPix2PixPipeline."
    ),
)
def checkpoint(context: dg.AssetExecutionContext, pbi: PBIProject, config: CheckpointRunConfig) -> dg.MaterializeResult:
    from pbi_ml.stages.training import NO_TRAIN_PAIRS, train_config_for, training_devices, training_examples

    recipe, train_config = train_config_for(pbi.stage_values("checkpoint", config))
    storage = pbi.storage()
    if not training_examples(storage):
        return skipped_result(context, NO_TRAIN_PAIRS, train_pairs=0)
    spec = {"root": str(storage.root), "recipe": recipe, "config": dataclasses.asdict(train_config)}
    with (
        training_devices(train_config, pbi.project().devices, pbi.lease_dir(), context.log.info) as held,
        tempfile.TemporaryDirectory(prefix="pbi-train-") as folder,
    ):
        context.log.info(f"devices: {held.lease}")
        Path(folder, "spec.json").write_text(json.dumps({**spec, "device": held.device}, default=list))
        command = launch_command(folder, held.world_size)
        context.log.info(f"launching {held.world_size} training process(es): {' '.join(command)}")
        with warnings.catch_warnings():  # Dagster's Pipes session calls a preview API of its own: nothing to act on
            warnings.simplefilter("ignore", dg.PreviewWarning)
            dg.PipesSubprocessClient().run(context=context, command=command, env={"PYTHONUNBUFFERED": "1", **held.env})
        result = json.loads(Path(folder, "result.json").read_text())
    metadata = checkpoint_metadata(result["row"], result["counts"])
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
        latents_encoded=counts["latents_encoded"],
        latents_reused=counts["latents_reused"],
        loss_curve=dg.MetadataValue.md(loss_curve_text(curve)),
        loss_curve_json=dg.MetadataValue.json(curve),
        loss_histogram=dg.MetadataValue.md(histogram_text([loss for _, loss in curve], title="training loss")),
    )
    if row["smoke_model"]:
        metadata["warning"] = SMOKE_WARNING
    return metadata


def launch_command(folder: str, world: int) -> list[str]:
    """`pbi_assets.train_entry` on `world` local processes: by itself for one, under `accelerate
    launch` (torch's elastic launcher; on CPU the processes use gloo) for several."""
    launcher = []
    if world > 1:
        with socket.socket() as sock:  # a free port for the processes' rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(world)]
        launcher += ["--num_machines", "1", "--main_process_port", str(port), "--dynamo_backend", "no"]
        launcher += ["--mixed_precision", "no"]  # the TrainConfig's mixed_precision decides, in the Accelerator
    return [sys.executable, *launcher, "-m", "pbi_assets.train_entry", folder]


@dg.asset(
    group_name="training",
    kinds={"pytorch", "parquet"},
    deps=[checkpoint],
    pool=GPU_POOL,
    tags=GPU_TAGS,
    op_tags=stage_op_tags("evaluation"),
    description=(
        "The latest checkpoint on the test split (and on a MagicBrush-format parquet's 'add' subset "
        "when configured): the paper's inference (EulerAncestral, 50 steps, guidance 7 / image 1.5, seed 0) "
        "and metrics L1, L2, CLIP-I, CLIP-T, DINO, CMMD; metrics whose weights are absent are null "
        "with the reason. Rows in the catalog's `evaluations` and `evaluation_samples` views."
    ),
)
def evaluation(context: dg.AssetExecutionContext, pbi: PBIProject, config: EvaluationRunConfig) -> dg.MaterializeResult:
    from pbi_ml.stages.evaluation import METRICS, EvaluationConfig, run_evaluation

    with on_a_device(context, pbi, pbi.stage_config("evaluation", EvaluationConfig, config)) as step:
        stage_config = step.config
        result = run_evaluation(pbi.storage(), stage_config)
    if result.skipped:
        return skipped_result(context, result.skipped)
    ckpt = result.extra["checkpoint"]
    meta: dict[str, Any] = {"checkpoint_id": ckpt["checkpoint_id"], "smoke_model": bool(ckpt["smoke_model"])}
    meta.update(step.metadata)
    for row in result.table.to_pylist():
        meta[f"{row['benchmark']}/n"] = row["n"]
        for m in METRICS:
            if row[m] is not None:
                meta[f"{row['benchmark']}/{m}"] = float(row[m])
            else:
                meta[f"{row['benchmark']}/{m}"] = f"null: {row[f'{m}_null_reason']}"
    samples = []
    for instruction, inp, out, tgt in result.extra["grid"]:
        samples += [(f"input: {instruction}", inp), ("output", out), ("ground truth", tgt)]
    meta["grid"] = (
        thumbnails_markdown(samples[:9], max_side=96) if samples else dg.MetadataValue.md("_no test samples_")
    )
    return dg.MaterializeResult(metadata=meta)

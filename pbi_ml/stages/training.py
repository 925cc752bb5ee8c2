"""The checkpoint stage: train the InstructPix2Pix "add an object" model on the train split.

Two recipes, chosen with `recipe` (any TrainConfig field set in pbi.yaml / run config overrides it):

    smoke   (default; CPU, no download) a tiny random SD built from config, trained for a few steps
            at 32 px on the pairs: it proves the pipeline end to end; it is NOT a useful editor and
            its metadata says so (smoke_model = true)
    paper   the paper's recipe (docs/method.md#training): SD 1.5 init (init_model), 256 px crops, Adam 5e-5, grad-clip 1,
            an effective batch of 4096 (128/device, accumulation from the world size), 60
            epochs, 5 %/5 %/5 % conditioning dropout, location phrase with p = 0.25; latents
            cached (`latents: cache`)

Both recipes cache latents (`latents: cache`, under `<data root>/global/latent_cache`, shared by
every run): smoke too, so the demo goes through the path the paper recipe takes, and a retraining
run on the same pairs encodes nothing. Set `latents: on_the_fly` to encode at every step.

The model: the UNet's conv_in widened to 8 channels (zero-initialised), VAE and text encoder
frozen, accelerate; checkpoints every N steps, resumed after a crash; the result is a diffusers
StableDiffusionInstructPix2PixPipeline.

Processes: `run_training` is what each training process runs, one per leased device (or
`num_processes`), by itself or under `accelerate launch` (pbi_ml.train.launch), the effective
batch kept; only rank 0 writes the checkpoints row.

The checkpoint folder is named after the run's identity (`checkpoint_id`: config and training
pairs, not the world size), so re-materializing with the same data resumes (or returns) that run,
on however many devices the step gets, and new data starts a new one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
from collections.abc import Callable, Iterator

from pbi_ml.catalog import read_view
from pbi_ml.config import config_from_dict
from pbi_ml.devices import device_of
from pbi_ml.errors import ConfigError
from pbi_ml.stages.common import StageResult
from pbi_ml.storage import Storage, atomic_write_bytes, table_from_records
from pbi_ml.tables import CHECKPOINTS, PAIRS, SPLITS
from pbi_ml.train.config import TrainConfig

RECIPES = ("smoke", "paper")
SMOKE_OVERRIDES = {
    "init_model": "tiny",
    "resolution": 32,
    "train_batch_size": 4,
    "gradient_accumulation_steps": 1,
    "num_epochs": None,
    "max_steps": 30,
    "checkpoint_every": 10,
    "latents": "cache",
}
PAPER_OVERRIDES = {"latents": "cache"}  # the rest is TrainConfig's defaults
LATENT_CACHE = "latent_cache"  # <data root>/global/latent_cache/<vae id>/<resolution>/...
NO_TRAIN_PAIRS = "no train pairs: no pair with an instruction is in the train split"


def train_config_for(values: dict) -> tuple[str, TrainConfig]:
    """(recipe, TrainConfig) from a recipe name plus explicit overrides."""
    values = dict(values or {})
    recipe = values.pop("recipe", None) or "smoke"
    if recipe not in RECIPES:
        raise ConfigError(f"checkpoint recipe {recipe!r} not one of {RECIPES}")
    base = dict(SMOKE_OVERRIDES if recipe == "smoke" else PAPER_OVERRIDES)
    base.update(values)
    return recipe, config_from_dict(TrainConfig, base)


def training_examples(storage: Storage) -> list:
    """TrainingExample for every train-split pair of every partition."""
    from pbi_ml.train import TrainingExample

    pairs = read_view(storage, PAIRS.name, where="split = 'train'").to_pylist()
    examples = []
    for row in sorted(pairs, key=lambda r: r["pair_id"]):
        kinds = tuple(
            dict.fromkeys(
                k
                for k in (row.get("instruction_vlm_llm"), row.get("instruction_class"), row.get("instruction_ref"))
                if k
            )
        )
        if not kinds:
            continue
        examples.append(
            TrainingExample(
                source_image=row["source_image"],
                target_image=row["target_image"],
                instructions=kinds,
                object_location=row["object_location"],
                key=row["pair_id"],
                mask=row.get("mask"),
                edit_mask=row.get("edit_mask"),  # crop: "object" keeps all of it in every crop
                digest=row.get("output_digest"),  # the latent cache's key: the same on every data root
            )
        )
    return examples


def checkpoint_id(recipe: str, config: TrainConfig, examples: list) -> str:
    """The run's name: the recipe and a digest of its identity (`pbi_ml.train.loop.run_identity`:
    config without run length and I/O fields, pairs). Raising max_steps, or another number of
    processes, resumes the same run instead of starting a new one."""
    from pbi_ml.train.loop import run_identity

    blob = json.dumps(run_identity(examples, config), sort_keys=True).encode()
    return f"{recipe}-{hashlib.blake2b(blob, digest_size=6).hexdigest()}"


@dataclasses.dataclass(frozen=True)
class TrainingDevices:
    """Where a training's processes run, and how the devices were got."""

    device: str  # what `run_training` gets: cpu, cuda (several processes), cuda:1, mps ...
    world_size: int  # processes, one per device
    env: dict[str, str]  # CUDA_VISIBLE_DEVICES of several processes: their local ranks index the leased GPUs
    devices: str  # the devices, comma-separated
    lease: str  # the lease slots, or "configured explicitly, not leased"


@contextlib.contextmanager
def training_devices(
    config: TrainConfig, node: tuple[str, ...], lease_dir: str, on_wait: Callable[[str], None]
) -> Iterator[TrainingDevices]:
    """The training's devices for the block. `device: auto` leases `num_processes` of the node's
    devices (`node`: pbi.yaml's `devices:`, or $PBI_DEVICES), every one when `num_processes` is
    unset, all at once (`on_wait` says so while they are taken). An explicit device is used
    unleased, with `num_processes` processes (default 1)."""
    from pbi_ml.devices import check_device, lease_devices, node_devices

    if config.device != "auto":
        device = check_device(config.device)
        world = config.num_processes or 1
        if world > 1 and device not in ("cpu", "cuda"):
            raise ConfigError(
                f"checkpoint: num_processes={world} on the single device {device}; list the devices "
                "in pbi.yaml `devices:` and set device: auto"
            )
        yield TrainingDevices(device, world, {}, device, f"{device} (configured explicitly, not leased)")
        return
    slots = node_devices(node)
    world = config.num_processes or len(slots)
    with lease_devices(slots, lease_dir, count=world, on_wait=on_wait) as leases:
        names = [lease.device for lease in leases]
        kinds = {name.split(":")[0] for name in names}
        if len(kinds) != 1 or not kinds <= {"cpu", "cuda"}:
            raise ConfigError(f"checkpoint: the leased devices {names} must all be cpu or all be cuda")
        kind = kinds.pop()
        env = {}
        if kind == "cuda" and world > 1:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(name.split(":")[1] if ":" in name else "0" for name in names)
        described = ", ".join(f"{lease.device} (slot {lease.slot})" for lease in leases)
        yield TrainingDevices(names[0] if world == 1 else kind, world, env, ",".join(names), described)


TrainProgress = Callable[[int, int, float], None]  # (step, total steps, loss)


def run_training(
    storage: Storage,
    config: TrainConfig,
    *,
    recipe: str = "smoke",
    progress: TrainProgress | None = None,
    log: Callable[[str], None] | None = None,
    device: str | None = None,
) -> StageResult:
    """Train on every train-split pair (`recipe` names the run: smoke or paper; build both with
    `train_config_for`). With no train pairs, returns a result whose `skipped` says so.

    Under `accelerate launch` every process calls this (the world size comes from $WORLD_SIZE);
    rank 0 alone writes the row; `log` gets rank 0's lines (latent cache progress, a resume on
    another world size). `device`: where to train instead of `config.device` (the device
    the step leased; not part of the checkpoint id)."""
    from pbi_ml.train import train_instruct_pix2pix

    examples = training_examples(storage)
    if not examples:
        return StageResult(
            table=CHECKPOINTS.schema.empty_table(),
            path=None,
            counts={"train_pairs": 0},
            skipped=NO_TRAIN_PAIRS,
        )
    world_size = int(os.environ.get("WORLD_SIZE") or 1)  # set by accelerate launch / torchrun
    ckpt_id = checkpoint_id(recipe, config, examples)
    out_dir = storage.global_dir(CHECKPOINTS.name) / ckpt_id
    result = train_instruct_pix2pix(
        examples,
        config,
        out_dir,
        progress=progress,
        log=log,
        latent_cache_dir=storage.global_dir(LATENT_CACHE),
        device=device,
    )
    if result.world_size != world_size:
        raise ConfigError(f"training ran on {result.world_size} processes, $WORLD_SIZE said {world_size}")
    row = {
        "checkpoint_id": ckpt_id,
        "recipe": recipe,
        "pipeline_dir": str(result.pipeline_dir),
        "smoke_model": bool(result.smoke_model),
        "train_pairs": len(examples),
        "train_examples_sources": ",".join(sorted({e.key.split("/")[0] for e in examples})),
        "steps": int(result.steps),
        "epochs_completed": float(result.epochs_completed),
        "final_loss": float(result.loss_curve[-1][1]) if result.loss_curve else None,
        "samples_per_second": float(result.samples_per_second),
        "wall_time_s": float(result.wall_time_s),
        "resumed_from_step": result.resumed_from_step,
        "loss_curve": json.dumps([[int(s), float(loss)] for s, loss in result.loss_curve]),
        "config": json.dumps(dataclasses.asdict(config), default=str),
        "world_size": int(result.world_size),
        "device": device or device_of(config),
        "effective_batch_size": int(result.per_process_batch * result.accumulation * result.world_size),
        "latents": result.latents,
    }
    table = table_from_records([row], CHECKPOINTS.schema)
    counts = {
        "steps": row["steps"],
        "train_pairs": row["train_pairs"],
        "latents_encoded": result.latents_encoded,
        "latents_reused": result.latents_reused,
        # processes of the checkpoint it resumed from (-1: a new run); another W draws other noise
        "resumed_world_size": result.resumed_world_size if result.resumed_world_size is not None else -1,
    }
    extra = {"result": result, "checkpoint_id": ckpt_id, "recipe": recipe}
    if result.process_index != 0:  # rank 0 writes the row (the others return theirs unwritten)
        return StageResult(table=table, path=None, counts=counts, extra=extra)
    path = storage.write_table(CHECKPOINTS, recipe, ckpt_id, table)
    atomic_write_bytes(storage.global_dir(CHECKPOINTS.name) / "LATEST", ckpt_id.encode())
    return StageResult(table=table, path=path, counts=counts, extra=extra)


def latest_checkpoint(storage: Storage) -> dict:
    """The checkpoints-table row of the most recent training run."""
    marker = storage.global_dir(CHECKPOINTS.name) / "LATEST"
    if not marker.exists():
        raise FileNotFoundError(f"{marker}: no checkpoint yet; materialize `checkpoint` first")
    ckpt_id = marker.read_text().strip()
    rows = read_view(storage, CHECKPOINTS.name, where=f"checkpoint_id = '{ckpt_id}'").to_pylist()
    if not rows:
        raise FileNotFoundError(f"checkpoint {ckpt_id} is not in tables/checkpoints")
    return rows[0]


def last_train_pair_count(storage: Storage) -> int | None:
    """How many train pairs the latest checkpoint saw (None before the first training)."""
    try:
        return int(latest_checkpoint(storage)["train_pairs"])
    except FileNotFoundError:
        return None


def current_train_pair_count(storage: Storage) -> int:
    return read_view(storage, SPLITS.name, where="split = 'train'").num_rows

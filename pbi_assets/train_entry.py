"""What every training process runs: `python -m pbi_assets.train_entry SPEC` (one process) or
`accelerate launch ... -m pbi_assets.train_entry SPEC` (several).

The `checkpoint` asset (pbi_assets.assets.training) writes SPEC, a JSON file {"root": data root,
"recipe", "config": TrainConfig fields, "device"}, and launches this module through Dagster Pipes
(`PipesSubprocessClient`). Every process calls pbi_ml's `run_training`; rank 0 alone talks to
Dagster: its log lines (progress every 10 steps) go to the step's log through `pipes.log`, and
the checkpoint's metadata (loss curve included) becomes the materialization via
`report_asset_materialization`. The other ranks only print to the step's stdout.

Only `dagster_pipes` is imported here, not `dagster`: a training image needs that small package
and pbi, not the orchestrator. Run by hand (no Pipes context), it trains and prints a warning.

Each process asks the kernel to kill it when its parent (the step, or the launcher) dies, so
`kill -9` of the step's process group leaves no orphan training on (torch's launcher starts its
workers in sessions of their own); the next materialization resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from pbi_assets.plots import histogram_text, loss_curve_text

SMOKE_WARNING = "SMOKE MODEL: tiny random architecture trained a few steps on CPU; not a useful editor."


def checkpoint_metadata(row: dict, counts: Mapping[str, float]) -> dict[str, dict]:
    """The `checkpoint` materialization's metadata, in the form `report_asset_materialization`
    takes, from its checkpoints-table row and the stage's counts (latent cache use)."""
    curve = json.loads(row["loss_curve"])
    entries = {  # name: (pipes metadata type, value)
        "checkpoint_id": ("text", row["checkpoint_id"]),
        "recipe": ("text", row["recipe"]),
        "smoke_model": ("bool", bool(row["smoke_model"])),
        "pipeline_dir": ("path", row["pipeline_dir"]),
        "train_pairs": ("int", int(row["train_pairs"])),
        "steps": ("int", int(row["steps"])),
        "final_loss": ("float", float(row["final_loss"]) if row["final_loss"] is not None else float("nan")),
        "samples_per_second": ("float", float(row["samples_per_second"])),
        "wall_time_s": ("float", float(row["wall_time_s"])),
        "resumed_from_step": ("int", int(row["resumed_from_step"]) if row["resumed_from_step"] is not None else -1),
        "world_size": ("int", int(row["world_size"])),
        "effective_batch_size": ("int", int(row["effective_batch_size"])),
        "latents": ("text", str(row["latents"])),
        "latents_encoded": ("int", int(counts["latents_encoded"])),
        "latents_reused": ("int", int(counts["latents_reused"])),
        "loss_curve": ("md", loss_curve_text(curve)),
        "loss_curve_json": ("json", curve),
        "loss_histogram": ("md", histogram_text([loss for _, loss in curve], title="training loss")),
    }
    if row["smoke_model"]:
        entries["warning"] = ("text", SMOKE_WARNING)
    return {name: {"raw_value": value, "type": kind} for name, (kind, value) in entries.items()}


def train(spec: dict, log: Callable[[str], None]) -> dict | None:
    """Run this process's part of the training; rank 0 returns the materialization's metadata."""
    from pbi_ml.config import config_from_dict
    from pbi_ml.stages.training import run_training
    from pbi_ml.storage import Storage
    from pbi_ml.train import TrainConfig

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % 10 == 0:
            log(f"training step {step}/{total} loss {loss:.4f}")

    config = config_from_dict(TrainConfig, spec["config"])
    result = run_training(
        Storage(spec["root"]), config, recipe=spec["recipe"], progress=progress, device=spec["device"]
    )
    if result.path is None:  # not rank 0 (or, raced, nothing to train)
        return None
    return checkpoint_metadata(result.table.to_pylist()[0], result.counts)


def _die_with_parent() -> None:
    """PR_SET_PDEATHSIG = SIGKILL on Linux (elsewhere nothing)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    spec = json.loads(Path(argv[0]).read_text())
    rank = int(os.environ.get("RANK") or 0)
    if rank != 0:
        train(spec, log=lambda line: print(f"[rank {rank}] {line}", flush=True))
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        world = int(os.environ.get("WORLD_SIZE") or 1)
        pipes.log.info(f"training on {world} process(es), device {spec['device']}, recipe {spec['recipe']}")
        metadata = train(spec, log=pipes.log.info)
        if metadata is None:
            raise RuntimeError("rank 0 trained but wrote no checkpoints row")
        pipes.report_asset_materialization(metadata=metadata)


if __name__ == "__main__":
    main()

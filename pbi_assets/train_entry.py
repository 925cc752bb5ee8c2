"""What each process of a multi-process training runs: `accelerate launch ... -m pbi_assets.train_entry JOB_FILE`.

The `checkpoint` asset (pbi_assets.training_launch) writes JOB_FILE, a JSON file {"root": data root,
"recipe", "config": TrainConfig fields, "device": "cpu" | "cuda"}, and launches this module
through Dagster Pipes (`PipesSubprocessClient`). Every process calls pbi_ml's `run_training`; rank
0 alone talks to Dagster: its log lines (progress every 10 steps) go to the step's log through
`pipes.log`, and the checkpoint's metadata (loss curve included) becomes the materialization via
`report_asset_materialization`. The other ranks only print to the step's stdout.

Only `dagster_pipes` is imported here, not `dagster`: a training image needs that small package
and pbi, not the orchestrator. Run by hand (no Pipes context), it trains and prints a warning.

Each process asks the kernel to kill it when its parent (the launcher) dies, so `kill -9` of the
step's process group - the launcher's - leaves no orphan training on (torch's launcher starts its
workers in sessions of their own); the next materialization resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path


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


def train(spec: dict, log=None) -> dict | None:
    """Run this process's part of the training; rank 0 returns the materialization metadata."""
    from pbi_assets.training_metadata import checkpoint_metadata
    from pbi_ml.config import config_from_dict
    from pbi_ml.stages.training import run_training
    from pbi_ml.storage import Storage
    from pbi_ml.train import TrainConfig

    config = config_from_dict(TrainConfig, spec["config"])

    def progress(step: int, total: int, loss: float) -> None:
        if log is not None and (step == total or step % 10 == 0):
            log(f"training step {step}/{total} loss {loss:.4f}")

    result = run_training(
        Storage(spec["root"]), config, recipe=spec["recipe"], progress=progress, device=spec.get("device")
    )
    if result.skipped or result.path is None:  # nothing to train, or not rank 0
        return None
    return checkpoint_metadata(result.table.to_pylist()[0], result.counts)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    _die_with_parent()
    spec = json.loads(Path(argv[0]).read_text())
    rank = int(os.environ.get("RANK") or 0)
    if rank != 0:
        train(spec, log=lambda line: print(f"[rank {rank}] {line}", flush=True))
        return
    from dagster_pipes import open_dagster_pipes

    from pbi_assets.training_metadata import to_pipes

    with open_dagster_pipes() as pipes:
        world = int(os.environ.get("WORLD_SIZE") or 1)
        pipes.log.info(f"training on {world} process(es), device {spec.get('device')}, recipe {spec['recipe']}")
        meta = train(spec, log=pipes.log.info)
        if meta is None:
            raise RuntimeError("rank 0 trained but wrote no checkpoints row")
        pipes.report_asset_materialization(metadata=to_pipes(meta))


if __name__ == "__main__":
    main()

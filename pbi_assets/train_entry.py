"""What every training process runs: `python -m pbi_assets.train_entry FOLDER` (one process) or
`accelerate launch ... -m pbi_assets.train_entry FOLDER` (several).

The `checkpoint` asset (pbi_assets.assets.training) writes FOLDER/spec.json {"root": data root,
"recipe", "config": TrainConfig fields, "device"} and launches this module through Dagster Pipes
(`PipesSubprocessClient`). Every process calls pbi_ml's `run_training`. Rank 0 sends its log
lines (progress every 10 steps) to the step's log through `pipes.log`, and writes
FOLDER/result.json, its checkpoints-table row and the stage's counts, from which the step builds
the materialization. Not `report_asset_materialization`: Dagster's file message reader tails the
message file line by line and stops at a line it reads half-written, which a message of many kB
(the loss curve's plots) can be, and the metadata is lost. The other ranks only print to the
step's stdout.

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
from collections.abc import Callable
from pathlib import Path


def train(folder: Path, log: Callable[[str], None]) -> None:
    """Run this process's part of the training; rank 0 writes FOLDER/result.json."""
    from pbi_ml.config import config_from_dict
    from pbi_ml.stages.training import run_training
    from pbi_ml.storage import Storage
    from pbi_ml.train import TrainConfig

    spec = json.loads((folder / "spec.json").read_text())

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % 10 == 0:
            log(f"training step {step}/{total} loss {loss:.4f}")

    log(
        f"training on {os.environ.get('WORLD_SIZE') or 1} process(es), device {spec['device']}, recipe {spec['recipe']}"
    )
    config = config_from_dict(TrainConfig, spec["config"])
    result = run_training(
        Storage(spec["root"]), config, recipe=spec["recipe"], progress=progress, device=spec["device"]
    )
    if result.path is not None:  # rank 0 wrote the row
        row = result.table.to_pylist()[0]
        (folder / "result.json").write_text(json.dumps({"row": row, "counts": result.counts}))


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
    folder = Path(argv[0])
    rank = int(os.environ.get("RANK") or 0)
    if rank != 0:
        train(folder, log=lambda line: print(f"[rank {rank}] {line}", flush=True))
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        train(folder, log=pipes.log.info)


if __name__ == "__main__":
    main()

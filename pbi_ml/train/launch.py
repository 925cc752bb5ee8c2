"""How the training processes of one `checkpoint` step are launched and report back, for 1..N
processes alike (as diffusers runs one script for any number of GPUs).

The step writes FOLDER/spec.json (`write_spec`: the data root, the recipe, the TrainConfig and
the device it leased) and starts `launch_command(entry_module, FOLDER, world)`: the entry
module by itself for one process, under `accelerate launch --multi_gpu` for several. Every
process calls `train_from_spec`, which runs `run_training`; rank 0 writes FOLDER/result.json,
its checkpoints-table row and the stage's counts, which the step reads (`read_result`). A file
rather than a message through the orchestrator: a message of many kB (the loss curve) can be
read half-written and lost.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from pbi_ml.storage import Storage
from pbi_ml.train.config import TrainConfig

SPEC_FILE = "spec.json"
RESULT_FILE = "result.json"


def write_spec(folder: str | Path, storage: Storage, recipe: str, config: TrainConfig, device: str) -> None:
    spec = {"root": str(storage.root), "recipe": recipe, "config": dataclasses.asdict(config), "device": device}
    Path(folder, SPEC_FILE).write_text(json.dumps(spec, default=list))


def launch_command(entry_module: str, folder: str | Path, world: int) -> list[str]:
    """`python -m entry_module FOLDER` on `world` local processes: by itself for one, under
    `accelerate launch` (torch's elastic launcher; on CPU the processes use gloo) for several."""
    launcher = []
    if world > 1:
        with socket.socket() as sock:  # a free port for the processes' rendezvous
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(world)]
        launcher += ["--num_machines", "1", "--main_process_port", str(port), "--dynamo_backend", "no"]
        launcher += ["--mixed_precision", "no"]  # the TrainConfig's mixed_precision decides, in the Accelerator
    return [sys.executable, *launcher, "-m", entry_module, str(folder)]


def train_from_spec(folder: str | Path, log: Callable[[str], None]) -> None:
    """This process's part of the training in FOLDER/spec.json; rank 0 writes FOLDER/result.json.
    `log` gets a line at the start and every 10 steps."""
    from pbi_ml.config import config_from_dict
    from pbi_ml.stages.training import run_training

    spec = json.loads(Path(folder, SPEC_FILE).read_text())

    def progress(step: int, total: int, loss: float) -> None:
        if step == total or step % 10 == 0:
            log(f"training step {step}/{total} loss {loss:.4f}")

    world = os.environ.get("WORLD_SIZE") or 1
    log(f"training on {world} process(es), device {spec['device']}, recipe {spec['recipe']}")
    config = config_from_dict(TrainConfig, spec["config"])
    result = run_training(
        Storage(spec["root"]), config, recipe=spec["recipe"], progress=progress, log=log, device=spec["device"]
    )
    if result.path is not None:  # rank 0 wrote the row
        row = result.table.to_pylist()[0]
        Path(folder, RESULT_FILE).write_text(json.dumps({"row": row, "counts": result.counts}))


def read_result(folder: str | Path) -> tuple[dict, dict]:
    """Rank 0's checkpoints-table row and the stage's counts."""
    result = json.loads(Path(folder, RESULT_FILE).read_text())
    return result["row"], result["counts"]


def die_with_parent() -> None:
    """Ask the kernel to kill this process when its parent (the step, or the launcher) dies, so
    `kill -9` of the step leaves no orphan training on (torch's launcher starts its workers in
    sessions of their own); the next materialization resumes from the last checkpoint.
    PR_SET_PDEATHSIG = SIGKILL on Linux; elsewhere nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the parent is already gone
        os._exit(1)

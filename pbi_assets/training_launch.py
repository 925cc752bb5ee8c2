"""How the `checkpoint` step trains: on its devices, in process or through Dagster Pipes.

Devices and processes. With `device: auto` the step leases its devices from the node
(`devices:` in pbi.yaml / $PBI_DEVICES, `pbi_ml.devices.lease_devices`): `num_processes` of them,
or every device of the node when `num_processes` is unset, all at once (waiting with a log line
while they are taken). An explicit `device` (cpu, cuda) is used unleased, with `num_processes`
processes (default 1).

One process: `run_training` runs in the step's own process, as it always has.

Several: the step launches `accelerate launch --multi_gpu --num_processes W -m
pbi_assets.train_entry JOB_FILE` through `dg.PipesSubprocessClient`, with CUDA_VISIBLE_DEVICES set to
the leased GPUs (on CPU pseudo-devices, `[cpu, cpu]`, the processes train on the CPU with the gloo
backend). Rank 0's log lines, and the materialization's metadata with the loss curve, come back
through Pipes; the lease metadata (device, device_lease) is added here.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

import dagster as dg

from pbi_assets.training_metadata import Entry, checkpoint_metadata
from pbi_ml.errors import ConfigError


def to_dagster(meta: dict[str, Entry]) -> dict[str, Any]:
    """(type, value) entries as Dagster metadata values."""
    out: dict[str, Any] = {}
    for name, (kind, value) in meta.items():
        if kind == "md":
            out[name] = dg.MetadataValue.md(value)
        elif kind == "path":
            out[name] = dg.MetadataValue.path(value)
        elif kind == "json":
            out[name] = dg.MetadataValue.json(value)
        else:
            out[name] = value
    return out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def training_devices(context, pbi, train_config):
    """(device kind "cpu" | "cuda" | explicit, CUDA ids or None, lease metadata) for the block."""
    from pbi_ml.devices import check_device, lease_devices, node_devices

    if train_config.device != "auto":
        device = check_device(train_config.device)
        world = train_config.num_processes or 1
        if world > 1 and device not in ("cpu", "cuda"):
            raise ConfigError(
                f"checkpoint: num_processes={world} on the single device {device}; list the devices "
                "in pbi.yaml `devices:` and set device: auto"
            )
        yield device, world, None, {"device": device, "device_lease": f"{device} (configured explicitly, not leased)"}
        return
    node = node_devices(pbi.project().devices)
    world = train_config.num_processes or len(node)
    with lease_devices(node, pbi.lease_dir(), count=world, on_wait=context.log.info) as leases:
        names = [lease.device for lease in leases]
        kinds = {name.split(":")[0] for name in names}
        if len(kinds) != 1 or not kinds <= {"cpu", "cuda"}:
            raise ConfigError(f"checkpoint: the leased devices {names} must all be cpu or all be cuda")
        kind = kinds.pop()
        cuda_ids = [name.split(":")[1] if ":" in name else "0" for name in names] if kind == "cuda" else None
        described = ", ".join(f"{lease.device} (slot {lease.slot})" for lease in leases)
        context.log.info(f"devices: {described} of {len(node)}")
        device = names[0] if world == 1 else kind
        yield device, world, cuda_ids, {"device": ",".join(names), "device_lease": described}


def train_checkpoint(context: dg.AssetExecutionContext, pbi, values: dict) -> dg.MaterializeResult:
    """The `checkpoint` asset's body (module docstring)."""
    from pbi_ml.stages.training import run_training, train_config_for, training_examples

    recipe, train_config = train_config_for(values)
    storage = pbi.storage()
    if not training_examples(storage):
        why = "no train pairs: no pair with an instruction is in the train split"
        context.log.warning(f"skipped: {why}")
        return dg.MaterializeResult(metadata={"skipped": why, "train_pairs": 0})
    with training_devices(context, pbi, train_config) as (device, world, cuda_ids, lease_meta):
        if world == 1:

            def progress(step: int, total: int, loss: float) -> None:
                if step == total or step % 10 == 0:
                    context.log.info(f"training step {step}/{total} loss {loss:.4f}")

            result = run_training(storage, train_config, recipe=recipe, progress=progress, device=device)
            meta = to_dagster(checkpoint_metadata(result.table.to_pylist()[0], result.counts))
            return dg.MaterializeResult(metadata={**meta, **lease_meta})
        done = launch_training(context, storage.root, recipe, train_config, device, world, cuda_ids)
        return dg.MaterializeResult(metadata={**(done.metadata or {}), **lease_meta})


def launch_command(spec_path: str, world: int) -> list[str]:
    """`accelerate launch` of `pbi_assets.train_entry` on `world` local processes."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",  # torch's elastic launcher; on CPU the processes use gloo (Accelerator(cpu=True))
        "--num_processes",
        str(world),
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        "no",  # the TrainConfig's mixed_precision decides, in the Accelerator
        "--dynamo_backend",
        "no",
        "-m",
        "pbi_assets.train_entry",
        spec_path,
    ]


def launch_training(
    context, root: Path, recipe: str, train_config, device: str, world: int, cuda_ids: list[str] | None
) -> dg.MaterializeResult:
    """Train on `world` processes through Pipes; the MaterializeResult rank 0 reported."""
    import dataclasses

    spec = {"root": str(root), "recipe": recipe, "config": dataclasses.asdict(train_config), "device": device}
    env = {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if cuda_ids is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(cuda_ids)
    with tempfile.TemporaryDirectory(prefix="pbi-train-") as folder:
        spec_path = Path(folder) / "spec.json"
        spec_path.write_text(json.dumps(spec, default=list))
        command = launch_command(str(spec_path), world)
        context.log.info(f"launching {world} training processes: {' '.join(command)}")
        client = dg.PipesSubprocessClient()
        done = client.run(context=context, command=command, env=env, extras={"world_size": world})
        return done.get_materialize_result()

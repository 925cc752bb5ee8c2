"""How a step asks for a GPU: the `gpu` pool (concurrency) and a tag (its pod's GPU request is
in its op tags, pbi_assets.execution.stage_op_tags); and which device of the node a model step
computes on (`on_a_device`)."""

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

GPU_POOL = "gpu"
GPU_TAGS = {"pbi/accelerator": "gpu"}


@dataclasses.dataclass
class ModelStep:
    """A model step's stage config with its device filled in, and the metadata that says which."""

    config: Any
    metadata: dict[str, Any]


@contextmanager
def on_a_device(context, pbi, stage_config) -> Iterator[ModelStep]:
    """A model step on a device of its own: `device: auto` leases a free one of the node's (waiting,
    with a log line, while all are taken); an explicit device is checked and used; an embedded
    backend takes none."""
    from pbi_ml.devices import device_of, step_device, uses_device

    if not uses_device(stage_config):
        yield ModelStep(stage_config, {"device": device_of(stage_config), "device_lease": "none: embedded backend"})
        return
    project = pbi.project()
    with step_device(stage_config.device, project.devices, pbi.lease_dir(), on_wait=context.log.info) as held:
        context.log.info(f"device: {held.describe()}")
        metadata: dict[str, Any] = {"device": held.device, "device_lease": held.describe()}
        if held.slot is not None:
            metadata["device_slot"] = held.slot
        yield ModelStep(dataclasses.replace(stage_config, device=held.device), metadata)

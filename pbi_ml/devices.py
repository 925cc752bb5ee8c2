"""Device leases: a model step with `device: auto` takes one free device for its lifetime.

The node's devices come from `devices:` in pbi.yaml (`auto` = every visible CUDA device, or `cpu`
when there is none; or a list such as `[cuda:0, cuda:1]`), overridden by `$PBI_DEVICES`
(`auto`, or a comma-separated list). Each listed entry is one lease slot, so `[cpu, cpu]` gives
two distinct slots on a CPU-only machine (how the tests exercise it).

A lease is an OS file lock (`filelock`, flock on Unix) on `<lease_dir>/slot<i>.lock`: two
processes never hold the same slot, and the kernel releases it when the holder exits, `kill -9`
included. When every slot is taken, `lease_device` waits, calling `on_wait` every `log_every_s`
seconds with a line saying so. Leases are per node: a pod or host sees only its own devices,
and the lease folder (`default_lease_dir`) must be on a node-local disk (flock on NFS is not
reliable), which is why it is not under the data root.

`step_device` is what a model step uses: with `device: auto` it leases one slot for the step's
lifetime; an explicit device (`cuda:1`) is used as given, unleased, after checking it is there.
The training step leases several slots at once (`lease_devices(count=N)`).

`resolve_device` and `resolve_dtype` turn a config's `device` / `dtype` into what torch takes.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pbi_ml.errors import ConfigError

DEVICES_ENV = "PBI_DEVICES"
LEASE_DIR_ENV = "PBI_LEASE_DIR"
_DEVICE_NAME = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")
DTYPES = ("auto", "float32", "float16", "bfloat16")  # a model config's `dtype`


@dataclass(frozen=True)
class Lease:
    """A held device: `device` to pass to torch, `slot` its index in the node's device list."""

    device: str
    slot: int


def parse_devices(value) -> tuple[str, ...]:
    """`auto`, a list of names, or a comma-separated string -> a tuple (("auto",) for auto)."""
    if value is None or value == "auto" or value == ["auto"]:
        return ("auto",)
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) and _DEVICE_NAME.match(n) for n in names):
        raise ConfigError(f"devices: {value!r} is not 'auto' or a list of cpu / mps / cuda / cuda:N")
    return tuple(names)


def node_devices(configured: tuple[str, ...] = ("auto",)) -> list[str]:
    """The node's lease slots: $PBI_DEVICES if set, else `configured`; `auto` expands to every
    visible CUDA device (or ["cpu"]). A CUDA device that is not there fails at once, naming it."""
    env = os.environ.get(DEVICES_ENV)
    devices = parse_devices(env) if env else tuple(configured)
    if devices == ("auto",):
        count = _cuda_count()
        return [f"cuda:{i}" for i in range(count)] or ["cpu"]
    wanted = [d for d in devices if d.startswith("cuda")]
    if wanted:
        count = _cuda_count()
        for name in wanted:
            index = int(name.split(":")[1]) if ":" in name else 0
            if index >= count:
                raise ConfigError(f"devices: {name} is not there (this node sees {count} CUDA device(s))")
    return list(devices)


def check_device(name: str) -> str:
    """An explicitly configured device, checked to be there (a missing GPU fails naming it)."""
    (checked,) = parse_devices([name])
    if checked.startswith("cuda"):
        count = _cuda_count()
        index = int(checked.split(":")[1]) if ":" in checked else 0
        if index >= count:
            raise ConfigError(f"device: {checked} is not there (this node sees {count} CUDA device(s))")
    return checked


def uses_device(config) -> bool:
    """Whether a stage config runs a model on a device (embedded backends: no). Configs without
    a `uses_device` property (training, evaluation) always do."""
    return bool(getattr(config, "uses_device", True))


def device_of(config) -> str:
    """The device a stage with this config computes on, as its tables record it: "cpu" for an
    embedded backend, else the config's device (`auto` resolved the way the backends do)."""
    if not uses_device(config):
        return "cpu"
    return resolve_device(str(getattr(config, "device", "auto")))


def resolve_device(device: str) -> str:
    """ "auto" -> "cuda" when torch sees a GPU, else "cpu". Imports torch lazily."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str):
    """ "auto" -> bfloat16 on a CUDA GPU that supports it (Ampere and later), else float16 on CUDA,
    float32 elsewhere. Returns a torch dtype."""
    import torch

    if dtype == "auto":
        if not device.startswith("cuda"):
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    try:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    except KeyError:
        raise ConfigError(f"dtype {dtype!r} not one of {DTYPES}") from None


def default_lease_dir() -> Path:
    """$PBI_LEASE_DIR, else $DAGSTER_HOME/device-leases, else <tmp>/pbi-device-leases-<uid>:
    node-local places (leases are per node)."""
    if os.environ.get(LEASE_DIR_ENV):
        return Path(os.environ[LEASE_DIR_ENV])
    if os.environ.get("DAGSTER_HOME"):
        return Path(os.environ["DAGSTER_HOME"]) / "device-leases"
    import tempfile

    return Path(tempfile.gettempdir()) / f"pbi-device-leases-{os.getuid()}"


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def lease_devices(
    devices: list[str],
    lease_dir: str | os.PathLike,
    *,
    count: int = 1,
    timeout_s: float | None = None,
    poll_s: float = 0.2,
    log_every_s: float = 30.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[list[Lease]]:
    """Hold `count` free slots of `devices` together for the `with` block (all or none: a step
    never sits on part of what it needs). Raises TimeoutError when `timeout_s` passes first."""
    from filelock import FileLock, Timeout

    if not devices:
        raise ConfigError("devices: the node has no device to lease")
    if not 1 <= count <= len(devices):
        raise ConfigError(f"devices: a step asks for {count} device(s) but the node has {len(devices)}: {devices}")
    folder = Path(lease_dir)
    folder.mkdir(parents=True, exist_ok=True)
    started = next_log = time.monotonic()
    while True:
        held: list[tuple[FileLock, Lease]] = []
        for slot, device in enumerate(devices):
            lock = FileLock(str(folder / f"slot{slot}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            held.append((lock, Lease(device=device, slot=slot)))
            if len(held) == count:
                break
        if len(held) == count:
            try:
                yield [lease for _, lease in held]
            finally:
                for lock, _ in held:
                    lock.release()
            return
        for lock, _ in held:
            lock.release()
        now = time.monotonic()
        if timeout_s is not None and now - started >= timeout_s:
            raise TimeoutError(
                f"no {count} free device(s) after {timeout_s:.0f} s: all {len(devices)} leased ({folder})"
            )
        if on_wait is not None and now >= next_log:  # at once, then every log_every_s
            free = len(held)
            on_wait(
                f"waiting for a free device: all {len(devices)} of {devices} are leased ({folder})"
                if count == 1
                else f"waiting for {count} free devices of {devices}: {free} free now ({folder})"
            )
            next_log = now + log_every_s
        time.sleep(poll_s)


@contextmanager
def lease_device(devices: list[str], lease_dir: str | os.PathLike, **kwargs) -> Iterator[Lease]:
    """Hold one free slot of `devices` for the `with` block (see `lease_devices`)."""
    with lease_devices(devices, lease_dir, count=1, **kwargs) as leases:
        yield leases[0]


@dataclass(frozen=True)
class StepDevice:
    """The device a model step runs on, and how it got it."""

    device: str
    slot: int | None  # the lease slot; None for an explicitly configured (unleased) device
    slots: int  # the node's lease slots

    def describe(self) -> str:
        if self.slot is None:
            return f"{self.device} (configured explicitly, not leased)"
        return f"{self.device} (lease slot {self.slot} of {self.slots})"


@contextmanager
def step_device(
    requested: str,
    configured: tuple[str, ...] = ("auto",),
    lease_dir: str | os.PathLike | None = None,
    *,
    on_wait: Callable[[str], None] | None = None,
    log_every_s: float = 30.0,
) -> Iterator[StepDevice]:
    """`auto`: lease one of the node's devices for the block; anything else: that device, checked."""
    if requested != "auto":
        yield StepDevice(device=check_device(requested), slot=None, slots=0)
        return
    devices = node_devices(configured)
    folder = lease_dir if lease_dir is not None else default_lease_dir()
    with lease_device(devices, folder, on_wait=on_wait, log_every_s=log_every_s) as lease:
        yield StepDevice(device=lease.device, slot=lease.slot, slots=len(devices))


def gpu_pool_report(configured: tuple[str, ...], pool: str, limit: int | None, default_limit: bool) -> list[str]:
    """`pbi info`'s lines on the node's devices and the Dagster pool `pool` (its `limit`, None =
    unlimited; `default_limit`: it comes from dagster.yaml), with a warning when they differ
    (operations.md#pools-and-devices)."""
    devices = node_devices(configured)
    where = f"${DEVICES_ENV}" if os.environ.get(DEVICES_ENV) else "pbi.yaml devices:"
    origin = "default_limit in dagster.yaml" if default_limit else "set with `dagster instance concurrency set`"
    lines = [
        f"devices:     {', '.join(devices)} ({len(devices)} lease slot(s), from {where}; leases in {default_lease_dir()})",
        f"{pool} pool:    {'unlimited' if limit is None else limit} step(s) at once ({origin})",
    ]
    if limit is not None and limit != len(devices):
        effect = (
            "GPUs stay idle" if limit < len(devices) else "the extra steps wait for a device lease, holding pool slots"
        )
        lines.append(
            f"warning: the {pool} pool allows {limit} step(s) at once but this node has {len(devices)} device(s): "
            f"{effect}. Make them agree: `dagster instance concurrency set {pool} {len(devices)}` "
            "(or pools: default_limit in $DAGSTER_HOME/dagster.yaml)"
        )
    return lines

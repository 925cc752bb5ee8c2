"""Device leases: a model step with `device: auto` takes one free device for its lifetime.

The node's devices come from `devices:` in pbi.yaml (`auto` = every visible CUDA device, or `cpu`
when there is none; or a list such as `[cuda:0, cuda:1]`), overridden by `$PBI_DEVICES`
(`auto`, or a comma-separated list). Each listed entry is one lease slot, so `[cpu, cpu]` gives
two distinct slots on a CPU-only machine (how the tests exercise it).

A lease is an OS file lock (`filelock`, flock on Unix) on `<lease_dir>/slot<i>.lock`: two
processes never hold the same slot, and the kernel releases it when the holder exits, `kill -9`
included. When every slot is taken, `lease_device` waits, calling `on_wait` every `log_every_s`
seconds with a line saying so. Leases are per node: a pod or host sees only its own devices.

Not wired into the stages yet (issue 8): the model stages still resolve `device: auto` themselves.
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
_DEVICE_NAME = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


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


def _cuda_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextmanager
def lease_device(
    devices: list[str],
    lease_dir: str | os.PathLike,
    *,
    timeout_s: float | None = None,
    poll_s: float = 0.2,
    log_every_s: float = 30.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[Lease]:
    """Hold one free slot of `devices` for the `with` block (see the module docstring).
    Raises TimeoutError when `timeout_s` passes with every slot taken."""
    from filelock import FileLock, Timeout

    if not devices:
        raise ConfigError("devices: the node has no device to lease")
    folder = Path(lease_dir)
    folder.mkdir(parents=True, exist_ok=True)
    started = next_log = time.monotonic()
    while True:
        for slot, device in enumerate(devices):
            lock = FileLock(str(folder / f"slot{slot}.lock"))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue
            try:
                yield Lease(device=device, slot=slot)
            finally:
                lock.release()
            return
        now = time.monotonic()
        if timeout_s is not None and now - started >= timeout_s:
            raise TimeoutError(f"no free device after {timeout_s:.0f} s: all {len(devices)} leased ({folder})")
        if on_wait is not None and now >= next_log:  # at once, then every log_every_s
            on_wait(f"waiting for a free device: all {len(devices)} of {devices} are leased ({folder})")
            next_log = now + log_every_s
        time.sleep(poll_s)

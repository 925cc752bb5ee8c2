"""A lock that holds across pods on shared storage (NFS and the like): a file created atomically.

`flock` / `fcntl` locks are node-local on many network file systems (NFS without a lock daemon,
some CSI drivers, FUSE mounts): two pods on two nodes may both "hold" the same flock. Creating a
file with O_CREAT | O_EXCL is atomic on NFSv3+ and every local file system, so exactly one
creator wins, whichever node it runs on.

The lock file holds JSON naming its holder (host, pid, a random token). While held, a thread
touches the file every `heartbeat_s`; a waiter breaks the lock when
  - its holder ran on this host (same hostname: a pod's hostname is its pod name) and that pid is
    gone: the holder died (kill -9, OOM) and the lock is taken at once; or
  - its mtime is older than `stale_after_s`: the holder's pod or node died (no heartbeat).
Breaking renames the file to a private name first (atomic), so of several waiters only one breaks
it; the lock is then taken by O_EXCL as usual. In the worst race (a waiter breaks a lock at the
moment its holder's successor took it) two builders run at once: every write is an atomic rename,
so that only repeats work.

Which locks are which (README, "Running on Kubernetes"):
  - node-local, on purpose: the device leases (pbi_ml.devices, flock on the node's lease dir): a
    GPU pod sees only its own GPUs, so a lease only has to exclude the processes of that node;
  - across pods: the source-index build lock (pbi_ml.sources.index), this module.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

DEFAULT_STALE_AFTER_S = 120.0
DEFAULT_HEARTBEAT_S = 10.0


def _holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # gone, or being written this instant (create, then write): not stale by content


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(path: Path, holder: dict | None, stale_after_s: float) -> bool:
    if holder and holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        if not _pid_alive(holder["pid"]):
            return True
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False
    return age > stale_after_s


def _break(path: Path, holder: dict | None) -> None:
    """Move a stale lock out of the way; only the waiter whose rename succeeds removes it."""
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return  # another waiter broke it first
    moved = _holder(aside)
    if holder is not None and moved is not None and moved.get("token") != holder.get("token"):
        # not the lock we judged stale: a new holder took the path meanwhile; give it back
        try:
            os.link(aside, path)  # fails if yet another holder exists: then two hold it (see module doc)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


@contextmanager
def create_lock(
    path: str | os.PathLike,
    *,
    stale_after_s: float = DEFAULT_STALE_AFTER_S,
    heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    poll_s: float = 0.2,
    timeout_s: float | None = None,
    log_every_s: float = 30.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """Hold the lock file `path` for the `with` block (see the module docstring); yields the holder
    record. Waits while another holds it; raises TimeoutError after `timeout_s` if given."""
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    me = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex, "since": time.time()}
    started = next_log = time.monotonic()
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            if _is_stale(lock, holder, stale_after_s):
                _break(lock, holder)
                continue
            now = time.monotonic()
            if timeout_s is not None and now - started >= timeout_s:
                raise TimeoutError(f"{lock}: still held after {timeout_s:.0f} s by {holder}") from None
            if on_wait is not None and now >= next_log:
                on_wait(f"waiting for {lock}, held by {holder}")
                next_log = now + log_every_s
            time.sleep(poll_s)
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(me, handle)
        break
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(heartbeat_s):
            try:
                os.utime(lock)
            except OSError:
                return

    beat = threading.Thread(target=heartbeat, name=f"lock-heartbeat {lock.name}", daemon=True)
    beat.start()
    try:
        yield me
    finally:
        stop.set()
        beat.join()
        current = _holder(lock)
        if current is not None and current.get("token") == me["token"]:
            lock.unlink(missing_ok=True)

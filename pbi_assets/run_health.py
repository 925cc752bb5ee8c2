"""The runs `pbi run` executes in its own process (`dg.materialize`), which no code server and no
run monitoring watch: each carries `process_tags()` (host, pid, the process's start time, so a
recycled pid is not taken for it); `cleanup_dead_runs` fails those whose process died and frees
their pool slots. Runs the daemon or the UI launched are Dagster's (docs/operations.md#killed-runs).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from functools import partial

import psutil

HOST_TAG = "pbi/host"
PID_TAG = "pbi/pid"
PID_STARTED_TAG = "pbi/pid_started"
_START_TIME_TOLERANCE_S = 1.0  # the tag keeps the start time to 1/100 s


def this_host() -> str:
    return socket.gethostname()


def process_tags() -> dict[str, str]:
    """Tags for a run executed in this process (`pbi run` puts them on every run it makes)."""
    me = psutil.Process()
    return {HOST_TAG: this_host(), PID_TAG: str(me.pid), PID_STARTED_TAG: f"{me.create_time():.2f}"}


def why_dead(run) -> str | None:
    """Why the process that executes `run` (from its tags) is gone, or None if it may still run it."""
    pid = int(run.tags[PID_TAG])
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            raise psutil.NoSuchProcess(pid)
        started = process.create_time()
    except psutil.NoSuchProcess:
        return f"its process {pid} on {this_host()} is gone"
    expected = run.tags.get(PID_STARTED_TAG)
    if expected and abs(started - float(expected)) > _START_TIME_TOLERANCE_S:
        return f"pid {pid} on {this_host()} is now another process (started {time.ctime(started)})"
    return None


def cleanup_dead_runs(instance) -> list[str]:
    """Fail every unfinished run `pbi run` made on this host whose process is gone, and free its
    pool slots and queued claims (`report_run_failed` alone frees none); a line for each."""
    import dagster as dg

    S = dg.DagsterRunStatus
    unfinished = [S.NOT_STARTED, S.STARTING, S.STARTED, S.CANCELING]
    storage, lines = instance.event_log_storage, []
    for run in instance.get_runs(dg.RunsFilter(statuses=unfinished, tags={HOST_TAG: this_host()})):
        if (reason := why_dead(run)) is None:
            continue
        infos = storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items()
        held = [f"{pool}:{s.step_key}" for pool, info in infos for s in info.claimed_slots if s.run_id == run.run_id]
        instance.report_run_failed(run, message=f"Marked failed by pbi: {reason}.")
        storage.free_concurrency_slots_for_run(run.run_id)
        what = "assets" if run.job_name.startswith("__") else run.job_name
        what += f" {run.tags['dagster/partition']}" if "dagster/partition" in run.tags else ""
        holding = f"; holding {', '.join(held)}" if held else ""
        lines.append(f"cleaned up run {run.run_id[:8]} ({what}{holding}): {reason}")
    return lines


class PoolWaitReporter:
    """Around the materialize calls: while a step of this process waits for a pool slot, a line
    every `interval` s ($PBI_POOL_WAIT_LOG_SECONDS, default 30) says who holds it, and dead holders
    are reaped (`cleanup_dead_runs`)."""

    def __init__(self, instance, interval: float | None = None, first_after: float | None = None, log=None):
        self.instance = instance
        self.interval = float(os.environ.get("PBI_POOL_WAIT_LOG_SECONDS", "30")) if interval is None else interval
        # a step may wait a moment for its claim to be assigned: report once it waited this long
        self.first_after = min(2.0, self.interval) if first_after is None else first_after
        self.log = log or partial(print, flush=True)  # from a thread, while the run's own output goes on
        self._next: dict[tuple[str, str], float] = {}  # (run id, step) waiting -> when its next line is due
        self._tags = process_tags()  # the runs of this process
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pbi-pool-wait", daemon=True)

    def __enter__(self) -> PoolWaitReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.wait(max(0.05, min(self.first_after or self.interval, self.interval, 2.0))):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - a busy SQLite, a storage hiccup: try again later
                print(f"(pool wait check failed: {exc})", file=sys.stderr, flush=True)

    def check(self) -> list[str]:
        """One look at the pools; returns the lines it logged about waiting steps."""
        import dagster as dg

        storage, now, lines, waiting = self.instance.event_log_storage, time.monotonic(), [], {}
        mine = {run.run_id for run in self.instance.get_runs(dg.RunsFilter(tags=self._tags))}
        for pool, info in storage.get_concurrency_infos(sorted(storage.get_concurrency_keys())).items():
            claimed = {(s.run_id, s.step_key) for s in info.claimed_slots}
            for pending in info.pending_steps:
                key = (pending.run_id, pending.step_key)
                if key in claimed or pending.run_id not in mine:
                    continue
                waiting[key] = self._next.get(key, now + self.first_after)
                if now >= waiting[key]:
                    waiting[key] = now + self.interval
                    held = ", ".join(f"run {s.run_id[:8]} step {s.step_key}" for s in info.claimed_slots)
                    lines.append(
                        f"  waiting for pool '{pool}' (limit {info.limit}): held by {held or 'nobody (no free slot)'}; "
                        f"waiting: {pending.step_key}"
                    )
        self._next = waiting
        for line in lines + ([f"  {line}" for line in cleanup_dead_runs(self.instance)] if lines else []):
            self.log(line)
        return lines

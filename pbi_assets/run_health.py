"""Runs whose process died (kill -9, OOM, a closed laptop) must not block the next run.

A run killed while a step held a pool slot stays STARTED in the instance and keeps the slot: Dagster
frees slots only when the executor finishes the step, or (the monitoring daemon, with
`run_monitoring.free_slots_after_run_end_seconds`) some time after the run *ended* - and nobody
ends a run whose process is gone when no code server watched it. So:

- `process_tags()` records on every run `pbi run` makes who runs it: `pbi/host`, `pbi/pid` and
  `pbi/pid_started` (the process's start time, so a recycled pid is not mistaken for the run).
  Runs the daemon / UI launched carry no such tags; for them the run worker's pid comes from
  Dagster's own engine event "Started process for run (pid: N)" (or the executor's
  "Executing steps in process (pid: N)", or RUN_START's pid), and the process must have started
  before that event.
- `cleanup_dead_runs(instance)` fails (RUN_FAILURE via `report_run_failed`) every unfinished run
  of this host whose process is gone, and frees its pool slots and queued slot claims
  (`free_concurrency_slots_for_run`: `report_run_failed` alone frees nothing). It also frees the
  slots still held by runs that already finished (what the monitoring daemon would do after
  `free_slots_after_run_end_seconds`, for instances where no daemon runs).
- `PoolWaitReporter` prints, while a step of this process waits for a pool slot, which pool and
  which runs hold it, every `interval` seconds (Dagster itself logs "Step blocked by limit for pool"
  only at DEBUG, every 300 s, without saying who holds the slot), and on each report re-runs the
  cleanup, so a holder that dies while we wait is reaped too.

Runs of another host (or, without `pbi/host`, of an instance whose storage is not local SQLite)
are never touched: their pids mean nothing here. Dagster's run monitoring covers those where the
run launcher can check its workers (K8s, ECS, Docker launchers; not the DefaultRunLauncher).
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pbi_assets.dagster_internals import ConcurrencyKeyInfo

HOST_TAG = "pbi/host"
PID_TAG = "pbi/pid"
PID_STARTED_TAG = "pbi/pid_started"
GRPC_INFO_TAG = "dagster/grpc_info"  # set by the DefaultRunLauncher: the code server that runs the worker

# a process start time read twice (or computed from /proc and from psutil) agrees to 1/100 s
_START_TIME_TOLERANCE_S = 2.0
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""}


# ---------------------------------------------------------------------------------------------
# processes


def this_host() -> str:
    return socket.gethostname()


def _proc_boot_time() -> float | None:
    try:
        for line in open("/proc/stat"):
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def _proc_stat(pid: int) -> tuple[str, float | None] | None:
    """(state, start time as epoch seconds) from /proc/<pid>/stat; None if no such process.
    Raises FileNotFoundError when there is no /proc at all."""
    if not os.path.isdir("/proc/self"):
        raise FileNotFoundError("/proc")
    try:
        raw = open(f"/proc/{pid}/stat").read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except PermissionError:
        return ("?", None)
    rest = raw[raw.rindex(")") + 2 :].split()  # the command name may contain spaces and ')'
    state, start_ticks = rest[0], int(rest[19])
    boot = _proc_boot_time()
    started = boot + start_ticks / os.sysconf("SC_CLK_TCK") if boot is not None else None
    return state, started


@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    started: float | None  # epoch seconds; None if the platform cannot tell
    cmdline: str | None


def process_info(pid: int) -> ProcessInfo | None:
    """The live process with this pid, or None if there is none (a zombie counts as gone)."""
    if pid <= 0:
        return None
    try:
        stat = _proc_stat(pid)
    except FileNotFoundError:  # no /proc (macOS): psutil if present, else only existence
        return _process_info_without_proc(pid)
    if stat is None or stat[0] in ("Z", "X", "x"):
        return None
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = None
    return ProcessInfo(pid, stat[1], cmdline)


def _process_info_without_proc(pid: int) -> ProcessInfo | None:
    try:
        import psutil  # not a declared dependency (accelerate brings it); optional here
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            try:
                cmdline = " ".join(proc.cmdline())
            except psutil.Error:
                cmdline = None
            return ProcessInfo(pid, proc.create_time(), cmdline)
        except psutil.NoSuchProcess:
            return None
        except psutil.Error:
            return ProcessInfo(pid, None, None)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return ProcessInfo(pid, None, None)


def process_tags() -> dict[str, str]:
    """Tags for a run executed in this process (`pbi run` puts them on every run it makes)."""
    me = process_info(os.getpid())
    tags = {HOST_TAG: this_host(), PID_TAG: str(os.getpid())}
    if me is not None and me.started is not None:
        tags[PID_STARTED_TAG] = f"{me.started:.2f}"
    return tags


# ---------------------------------------------------------------------------------------------
# which process runs a run


@dataclass(frozen=True)
class RunProcess:
    """Who executes a run: `started_at` is the exact start time of the process (from our tags),
    `started_before` an upper bound (the time of an event that process wrote)."""

    host: str
    pid: int
    source: str  # where we learnt it, for messages
    started_at: float | None = None
    started_before: float | None = None


def _storage_is_local(instance) -> bool:
    """Runs stored in local SQLite files: their processes are on this machine."""
    from pbi_assets.dagster_internals import SqliteRunStorage

    return isinstance(getattr(instance, "run_storage", None), SqliteRunStorage)


def _worker_pid_from_events(instance, run_id: str) -> tuple[int, float, str] | None:
    """(pid, event timestamp, what) of the process that executes the run, from Dagster's events."""
    from dagster import DagsterEventType

    events = instance.all_logs(run_id, of_type={DagsterEventType.ENGINE_EVENT, DagsterEventType.RUN_START})
    fallback = None
    for entry in events:
        event = entry.dagster_event
        if event is None:
            continue
        message = event.message or ""
        meta = getattr(event.event_specific_data, "metadata", None) or {}
        pid_meta = meta.get("pid")
        pid = getattr(pid_meta, "value", pid_meta)
        if message.startswith("Started process for run") and pid:  # the DefaultRunLauncher's worker
            return int(pid), entry.timestamp, "run worker"
        if message.startswith("Executing steps in process") and pid:  # the in-process executor
            return int(pid), entry.timestamp, "in-process run"
        if message.startswith("Executing steps using multiprocess executor") and pid and fallback is None:
            fallback = (int(pid), entry.timestamp, "multiprocess executor")
        if event.event_type == DagsterEventType.RUN_START and event.pid and fallback is None:
            fallback = (int(event.pid), entry.timestamp, "run")
    return fallback


def run_process(instance, run) -> RunProcess | None:
    """The process that executes `run`, when it can be known on this host; None otherwise."""
    tags = run.tags
    if tags.get(PID_TAG):
        try:
            pid = int(tags[PID_TAG])
        except ValueError:
            return None
        started = tags.get(PID_STARTED_TAG)
        return RunProcess(
            host=tags.get(HOST_TAG, ""),
            pid=pid,
            source="pbi run",
            started_at=float(started) if started else None,
        )
    # launched by the daemon / UI / `dagster asset materialize`: no host recorded, so only on an
    # instance whose storage is local files, and only for a code server on this machine
    if not _storage_is_local(instance):
        return None
    grpc_info = tags.get(GRPC_INFO_TAG)
    if grpc_info:
        import json

        try:
            grpc_host = json.loads(grpc_info).get("host") or ""
        except ValueError:
            return None
        if grpc_host not in _LOCAL_HOSTS | {this_host(), socket.getfqdn()}:
            return None
    found = _worker_pid_from_events(instance, run.run_id)
    if found is None:
        return None
    pid, when, what = found
    return RunProcess(host=this_host(), pid=pid, source=what, started_before=when)


def why_dead(proc: RunProcess) -> str | None:
    """Why the process of a run is gone, or None if it may still be running it."""
    info = process_info(proc.pid)
    if info is None:
        return f"its process {proc.pid} ({proc.source}) on {proc.host} is gone"
    if info.started is not None:
        if proc.started_at is not None and abs(info.started - proc.started_at) > _START_TIME_TOLERANCE_S:
            return f"pid {proc.pid} on {proc.host} is now another process (started {time.ctime(info.started)})"
        if proc.started_before is not None and info.started > proc.started_before + _START_TIME_TOLERANCE_S:
            return f"pid {proc.pid} on {proc.host} is now another process (started after the run's worker)"
        return None
    if info.cmdline is not None and not any(word in info.cmdline for word in ("python", "dagster", "pbi")):
        return f"pid {proc.pid} on {proc.host} is now another program ({info.cmdline[:60]!r})"
    return None


# ---------------------------------------------------------------------------------------------
# cleanup


@dataclass
class CleanedRun:
    run_id: str
    what: str  # job / partition / steps in flight / slots held
    reason: str
    previous_status: str
    freed_slots: list[str] = field(default_factory=list)  # "pool:step"

    def line(self) -> str:
        slots = f"; freed {', '.join(self.freed_slots)}" if self.freed_slots else ""
        return f"cleaned up run {self.run_id[:8]} ({self.what}): {self.reason}{slots}"


def _slots_by_run(instance) -> dict[str, dict[str, list[str]]]:
    """run_id -> {"claimed": ["pool:step"], "pending": ["pool:step"]} over every pool."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return {}
    keys = sorted(storage.get_concurrency_keys())
    out: dict[str, dict[str, list[str]]] = {}
    for key, info in storage.get_concurrency_infos(keys).items():
        claimed = {(s.run_id, s.step_key) for s in info.claimed_slots}
        for run_id, step in claimed:
            out.setdefault(run_id, {"claimed": [], "pending": []})["claimed"].append(f"{key}:{step}")
        for p in info.pending_steps:
            if (p.run_id, p.step_key) not in claimed:
                out.setdefault(p.run_id, {"claimed": [], "pending": []})["pending"].append(f"{key}:{p.step_key}")
    return out


def _steps_in_flight(instance, run_id: str) -> list[str]:
    from dagster import DagsterEventType

    ended = {DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE, DagsterEventType.STEP_SKIPPED}
    started: dict[str, None] = {}
    for entry in instance.all_logs(run_id, of_type={DagsterEventType.STEP_START, *ended}):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        if event.event_type == DagsterEventType.STEP_START:
            started[event.step_key] = None
        else:
            started.pop(event.step_key, None)
    return list(started)


def _describe(instance, run, slots: dict[str, list[str]] | None) -> str:
    parts = []
    partition = run.tags.get("dagster/partition")
    job = run.job_name if not run.job_name.startswith("__") else "assets"
    parts.append(f"{job} {partition}" if partition else job)
    steps = _steps_in_flight(instance, run.run_id)
    if steps:
        parts.append(f"running {', '.join(steps)}")
    if slots and slots["claimed"]:
        parts.append(f"holding {', '.join(slots['claimed'])}")
    return "; ".join(parts)


def cleanup_dead_runs(instance, now: float | None = None) -> list[CleanedRun]:
    """Fail every unfinished run of this host whose process is gone, free its pool slots; free
    the slots finished runs still hold. Returns what it did (one entry per run)."""
    from dagster import DagsterRunStatus, RunsFilter

    now = time.time() if now is None else now
    cleaned: list[CleanedRun] = []
    slots = _slots_by_run(instance)
    storage = instance.event_log_storage
    unfinished = [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    for record in instance.get_run_records(filters=RunsFilter(statuses=unfinished)):
        run = record.dagster_run
        proc = run_process(instance, run)
        if proc is None or proc.host != this_host():
            continue
        reason = why_dead(proc)
        if reason is None:
            continue
        current = instance.get_run_by_id(run.run_id)  # the code server may have just failed it
        if current is None:
            continue
        what = _describe(instance, current, slots.get(run.run_id))
        held = slots.get(run.run_id, {"claimed": [], "pending": []})
        if not current.is_finished:
            message = f"Marked failed by pbi: {reason}."
            if current.status == DagsterRunStatus.CANCELING:
                instance.report_run_canceled(current, message=message)
            else:
                instance.report_run_failed(current, message=message)
        if storage.supports_global_concurrency_limits:
            storage.free_concurrency_slots_for_run(run.run_id)
        cleaned.append(CleanedRun(run.run_id, what, reason, current.status.value, list(held["claimed"])))
        slots.pop(run.run_id, None)

    # finished runs that still hold slots or queued claims (Dagster's monitoring daemon frees them
    # `free_slots_after_run_end_seconds` after the run ended - when a daemon runs at all)
    if slots:
        settings = instance.run_monitoring_settings or {}
        grace = float(settings.get("free_slots_after_run_end_seconds") or 0)
        for record in instance.get_run_records(filters=RunsFilter(run_ids=list(slots))):
            run = record.dagster_run
            if not run.is_finished:
                continue
            ended = record.end_time or (record.update_timestamp.timestamp() if record.update_timestamp else 0)
            if ended and now - ended < grace:
                continue
            held = slots[run.run_id]
            storage.free_concurrency_slots_for_run(run.run_id)
            cleaned.append(
                CleanedRun(
                    run.run_id,
                    _describe(instance, run, held),
                    f"it ended ({run.status.value}) but still held pool slots",
                    run.status.value,
                    list(held["claimed"]),
                )
            )
    return cleaned


# ---------------------------------------------------------------------------------------------
# telling the user what a step waits for


def pool_wait_interval() -> float:
    """Seconds between 'waiting for pool' lines: $PBI_POOL_WAIT_LOG_SECONDS, default 30."""
    try:
        return max(0.1, float(os.environ.get("PBI_POOL_WAIT_LOG_SECONDS", "30")))
    except ValueError:
        return 30.0


class PoolWaitReporter:
    """A daemon thread that, while a step of a run executed by this process waits for a pool slot,
    logs every `interval` s: waiting for pool 'gpu' (limit 1): held by run abc12345 step evaluation.
    Use as a context manager around the materialize calls."""

    def __init__(
        self,
        instance,
        interval: float | None = None,
        log: Callable[[str], None] | None = None,
        first_after: float | None = None,
        cleanup: bool = True,
    ):
        self.instance = instance
        self.interval = pool_wait_interval() if interval is None else interval
        # a step may wait a moment for its claim to be assigned: report once it waited this long
        self.first_after = min(2.0, self.interval) if first_after is None else first_after
        self.log = log or (lambda line: print(line, flush=True))
        self.cleanup = cleanup
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mine: dict[str, bool] = {}
        self._first_seen: dict[tuple[str, str], float] = {}
        self._last_logged: dict[tuple[str, str], float] = {}
        self.lines: list[str] = []

    def __enter__(self) -> PoolWaitReporter:
        self._thread = threading.Thread(target=self._loop, name="pbi-pool-wait", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _is_mine(self, run_id: str) -> bool:
        if run_id not in self._mine:
            run = self.instance.get_run_by_id(run_id)
            self._mine[run_id] = bool(
                run is not None and run.tags.get(PID_TAG) == str(os.getpid()) and run.tags.get(HOST_TAG) == this_host()
            )
        return self._mine[run_id]

    def _emit(self, line: str) -> None:
        self.lines.append(line)
        self.log(line)
        sys.stdout.flush()

    def _loop(self) -> None:
        poll = min(self.first_after if self.first_after > 0 else self.interval, self.interval, 2.0)
        poll = max(poll, 0.05)
        while not self._stop.wait(poll):
            try:
                self.check()
            except Exception as exc:  # noqa: BLE001 - a busy SQLite, a storage hiccup: try again later
                print(f"(pool wait check failed: {exc})", file=sys.stderr, flush=True)

    def check(self) -> list[str]:
        """One look at the pools; returns the lines it logged."""
        storage = self.instance.event_log_storage
        if not storage.supports_global_concurrency_limits:
            return []
        now = time.monotonic()
        keys = sorted(storage.get_concurrency_keys())
        waiting_now: set[tuple[str, str]] = set()
        due: list[tuple[str, ConcurrencyKeyInfo, str, str]] = []
        for pool, info in storage.get_concurrency_infos(keys).items():
            claimed = {(s.run_id, s.step_key) for s in info.claimed_slots}
            for pending in info.pending_steps:
                key = (pending.run_id, pending.step_key)
                if key in claimed or not self._is_mine(pending.run_id):
                    continue
                waiting_now.add(key)
                first = self._first_seen.setdefault(key, now)
                last = self._last_logged.get(key)
                if (last is None and now - first >= self.first_after) or (
                    last is not None and now - last >= self.interval
                ):
                    self._last_logged[key] = now
                    due.append((pool, info, pending.run_id, pending.step_key))
        for key in list(self._first_seen):
            if key not in waiting_now:
                self._first_seen.pop(key, None)
                self._last_logged.pop(key, None)
        logged = []
        for pool, info, _run_id, step in due:
            held = ", ".join(f"run {s.run_id[:8]} step {s.step_key}" for s in info.claimed_slots)
            line = f"  waiting for pool '{pool}' (limit {info.limit}): held by {held or 'nobody (no free slot)'}; waiting: {step}"
            self._emit(line)
            logged.append(line)
        if due and self.cleanup:
            for cleaned in cleanup_dead_runs(self.instance):
                self._emit(f"  {cleaned.line()}")
        return logged

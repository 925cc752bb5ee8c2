"""`pbi backfill`: a real Dagster asset backfill, the one the UI's "Materialize all → Launch backfill" makes.

The UI sends the GraphQL mutation `launchPartitionBackfill` with `assetSelection` (every asset of the
lineage) and `partitionNames` (the partitions ticked in the dialog); its resolver
(`dagster_graphql.implementation.execution.backfill.create_and_launch_partition_backfill`) builds a
`PartitionBackfill.from_asset_partitions(...)` over the asset graph and stores it with
`instance.add_backfill`. `launch_backfill` does the same, over every partition of one source: the
partitioned assets for those partitions, plus the unpartitioned assets downstream (run once, after
the partitions they depend on). Nothing runs here: the daemon's backfill loop (`dagster-daemon run`,
or the one `dagster dev` starts) turns it into runs, one per partition, queued and started at most
`concurrency.runs.max_concurrent_runs` at once, their steps gated by the pools (`gpu`, ...).

`follow_backfill` polls the instance and prints a progress line whenever it changes: partitions done,
failed and running, and the unpartitioned assets downstream. `DaemonProcess` starts `dagster-daemon
run` in its own process group when none is running (no recent BACKFILL heartbeat in the instance)
and stops it by process group.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BACKFILL_DAEMON = "BACKFILL"  # the daemon type whose heartbeat says backfills are being processed
# the daemon beats every 30 s (dagster._daemon.controller.DEFAULT_HEARTBEAT_INTERVAL_SECONDS)
HEARTBEAT_STALE_S = 90.0
TITLE_TAG = "pbi/launched_by"


class BackfillError(Exception):
    """The backfill cannot be made from what was asked (a selection, a source)."""


@dataclass(frozen=True)
class LaunchedBackfill:
    backfill_id: str
    partitions: list[str]  # partition keys of the source ("000|demo", ...), in shard order
    partitioned_assets: list[str]
    unpartitioned_assets: list[str]


def selected_asset_keys(asset_graph, selection: str | None) -> list:
    """The asset keys of a Dagster asset selection string (`pairs+`, `key:removals or key:pairs`,
    `group:removal`...), or every asset of the project; in topological order."""
    import dagster as dg

    if not selection:
        keys = set(asset_graph.get_all_asset_keys())
    else:
        try:
            keys = set(dg.AssetSelection.from_string(selection).resolve(asset_graph))
        except Exception as exc:  # noqa: BLE001 - the selection's parse or resolve error, in one line
            first = next((line for line in str(exc).splitlines() if line.strip()), exc.__class__.__name__)
            raise BackfillError(f"--assets {selection!r}: {first}") from None
        if not keys:
            raise BackfillError(f"--assets {selection!r}: selects no asset")
    order = [key for level in asset_graph.toposorted_asset_keys_by_level for key in level]
    return [key for key in order if key in keys]


def launch_backfill(instance, source: str, selection: str | None = None) -> LaunchedBackfill:
    """Store a backfill of `selection` (default: every asset) over every partition of `source`, as
    the UI's launchPartitionBackfill does; the daemon runs it."""
    backfill, launched = make_backfill(instance, source, selection)
    instance.add_backfill(backfill)
    return launched


def make_backfill(instance, source: str, selection: str | None = None):
    """(the PartitionBackfill, its summary), not stored yet."""
    from pbi_assets.dagster_internals import AssetGraphSubset, PartitionBackfill, make_new_backfill_id
    from pbi_assets.definitions import defs
    from pbi_assets.partitions import partition_keys_for_source

    asset_graph = defs.resolve_asset_graph()
    keys = selected_asset_keys(asset_graph, selection)
    partitioned = [k for k in keys if asset_graph.get(k).is_partitioned]
    unpartitioned = [k for k in keys if not asset_graph.get(k).is_partitioned]
    partitions = [str(k) for k in partition_keys_for_source(source)]
    backfill_id = make_new_backfill_id()
    timestamp = time.time()
    what = f" --assets {selection}" if selection else ""
    common: dict[str, Any] = dict(
        backfill_id=backfill_id,
        backfill_timestamp=timestamp,
        tags={"pbi/source": source, TITLE_TAG: "pbi backfill"},
        dynamic_partitions_store=instance,  # the instance keeps dynamic partitions (ours are static)
        title=f"pbi backfill --source {source}{what}"[:100],
        description=f"every partition of source {source!r} ({len(partitions)} shards) and the assets downstream",
        run_config=None,
    )
    if partitioned:
        backfill = PartitionBackfill.from_asset_partitions(
            asset_graph=asset_graph,
            partition_names=partitions,
            asset_selection=keys,
            all_partitions=False,
            **common,
        )
    else:  # only unpartitioned assets: the UI launches a plain run then; a backfill does the same work
        backfill = PartitionBackfill.from_asset_graph_subset(
            asset_graph_subset=AssetGraphSubset(non_partitioned_asset_keys=set(keys)), **common
        )
    return backfill, LaunchedBackfill(
        backfill_id=backfill_id,
        partitions=partitions if partitioned else [],
        partitioned_assets=[k.to_user_string() for k in partitioned],
        unpartitioned_assets=[k.to_user_string() for k in unpartitioned],
    )


# ---------------------------------------------------------------------------------------------
# the daemon


def daemon_alive(instance, stale_after_s: float = HEARTBEAT_STALE_S) -> bool:
    """A daemon processes this instance's backfills: its BACKFILL heartbeat is recent."""
    beat = instance.get_daemon_heartbeats().get(BACKFILL_DAEMON)
    return beat is not None and time.time() - beat.timestamp < stale_after_s


def workspace_args(cwd: Path | None = None) -> list[str]:
    """How the daemon loads the code location: ./workspace.yaml (what `dagster dev -w workspace.yaml`
    loads), else the module itself."""
    workspace = (cwd or Path.cwd()) / "workspace.yaml"
    if workspace.is_file():
        return ["-w", str(workspace)]
    return ["-m", "pbi_assets.definitions", "-a", "defs"]


def _daemon_executable() -> str:
    beside = Path(sys.executable).with_name("dagster-daemon")
    if beside.exists():
        return str(beside)
    found = shutil.which("dagster-daemon")
    if not found:
        raise BackfillError("dagster-daemon not found (it comes with dagster: pip install dagster)")
    return found


@dataclass
class DaemonProcess:
    """`dagster-daemon run` for this DAGSTER_HOME, in its own process group (its code server and the
    run workers it launches are in that group too), logging to `log_path`."""

    log_path: Path
    cwd: Path = field(default_factory=Path.cwd)
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [_daemon_executable(), "run", *workspace_args(self.cwd)]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command,
                cwd=self.cwd,
                env=dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own session and process group: killpg stops it all
            )

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def exited(self) -> int | None:
        return self.process.poll() if self.process else None

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace_s`; then reap."""
        if self.process is None:
            return
        pgid = self.process.pid  # start_new_session: the group id is the leader's pid
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _group_alive(pgid):
                self.process.poll()
                time.sleep(0.2)
            if not _group_alive(pgid):
                break
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------------------------------------------
# following a backfill


@dataclass(frozen=True)
class Progress:
    status: str  # the backfill's BulkActionStatus value
    partitions: int
    done: int  # every targeted partitioned asset materialized for the partition
    failed: int  # a targeted asset failed for it (or upstream of it)
    running: int  # a run of the backfill for it is in progress
    downstream: int  # unpartitioned assets targeted
    downstream_done: int
    downstream_failed: int
    queued_runs: int
    finished: bool

    def line(self, seconds: float, width: int = 24) -> str:
        total = max(self.partitions, 1)
        filled = int(round(width * self.done / total)) if self.partitions else width
        bad = int(round(width * self.failed / total)) if self.partitions else 0
        bar = "#" * filled + "x" * min(bad, width - filled)
        bar += "." * (width - len(bar))
        parts = [f"[{bar}] partitions {self.done}/{self.partitions} done, {self.failed} failed, {self.running} running"]
        if self.downstream:
            parts.append(f"downstream {self.downstream_done}/{self.downstream} done, {self.downstream_failed} failed")
        if self.queued_runs:
            parts.append(f"{self.queued_runs} runs queued")
        return "  " + "; ".join(parts) + f" ({seconds:.0f}s, {self.status.lower()})"


def backfill_progress(instance, backfill_id: str, asset_graph) -> Progress:
    from dagster import DagsterRunStatus, RunsFilter

    from pbi_assets.dagster_internals import BACKFILL_ID_TAG, BULK_ACTION_TERMINAL_STATUSES, PARTITION_NAME_TAG

    backfill = instance.get_backfill(backfill_id)
    if backfill is None:
        raise BackfillError(f"no backfill {backfill_id} in this instance")
    data = backfill.get_asset_backfill_data(asset_graph)
    target = data.target_subset
    partitioned = [k for k in target.asset_keys if k in target.partitions_subsets_by_asset_key]
    unpartitioned = sorted(target.non_partitioned_asset_keys)
    keys: list[str] = sorted({p for k in partitioned for p in target.get_partitions_subset(k).get_partition_keys()})

    def has(subset, asset, partition=None) -> bool:
        if partition is None:
            return asset in subset.non_partitioned_asset_keys
        if asset not in subset.partitions_subsets_by_asset_key:
            return False
        return partition in subset.get_partitions_subset(asset)

    done = sum(all(has(data.materialized_subset, a, p) for a in partitioned) for p in keys)
    failed = sum(
        any(
            has(data.failed_and_downstream_subset, a, p) and not has(data.materialized_subset, a, p)
            for a in partitioned
        )
        for p in keys
    )
    runs = instance.get_runs(
        RunsFilter(
            tags={BACKFILL_ID_TAG: backfill_id},
            statuses=[
                DagsterRunStatus.QUEUED,
                DagsterRunStatus.NOT_STARTED,
                DagsterRunStatus.STARTING,
                DagsterRunStatus.STARTED,
            ],
        )
    )
    started = [r for r in runs if r.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED)]
    running = len({r.tags.get(PARTITION_NAME_TAG) for r in started if r.tags.get(PARTITION_NAME_TAG)})
    return Progress(
        status=backfill.status.value,
        partitions=len(keys),
        done=done,
        failed=failed,
        running=running,
        downstream=len(unpartitioned),
        downstream_done=sum(has(data.materialized_subset, a) for a in unpartitioned),
        downstream_failed=sum(
            has(data.failed_and_downstream_subset, a) and not has(data.materialized_subset, a) for a in unpartitioned
        ),
        queued_runs=len(runs) - len(started),
        finished=backfill.status in BULK_ACTION_TERMINAL_STATUSES,
    )


def follow_backfill(
    instance,
    backfill_id: str,
    log: Callable[[str], None] = print,
    poll_s: float = 2.0,
    heartbeat_s: float = 30.0,
    on_poll: Callable[[], None] | None = None,
) -> Progress:
    """Print a progress line whenever the counts change (and every `heartbeat_s`) until the backfill
    ends; returns the last progress. `on_poll` runs on every poll (e.g. to check the daemon)."""
    from pbi_assets.definitions import defs

    asset_graph = defs.resolve_asset_graph()
    started = time.monotonic()
    last_line, last_print = "", 0.0
    while True:
        if on_poll is not None:
            on_poll()
        progress = backfill_progress(instance, backfill_id, asset_graph)
        line = progress.line(0)
        now = time.monotonic()
        if line != last_line or now - last_print >= heartbeat_s or progress.finished:
            log(progress.line(now - started))
            last_line, last_print = line, now
        if progress.finished:
            return progress
        time.sleep(poll_s)


def failed_runs(instance, backfill_id: str) -> list:
    from dagster import DagsterRunStatus, RunsFilter

    from pbi_assets.dagster_internals import BACKFILL_ID_TAG

    return list(
        instance.get_runs(
            RunsFilter(
                tags={BACKFILL_ID_TAG: backfill_id}, statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]
            )
        )
    )


def runs_in_flight_since(instance, since: float) -> Sequence:
    """Unfinished runs created after `since` (epoch seconds): what a daemon launched meanwhile."""
    from dagster import DagsterRunStatus, RunsFilter

    S = DagsterRunStatus
    unfinished = [S.QUEUED, S.NOT_STARTED, S.STARTING, S.STARTED, S.SUSPENDED, S.CANCELING]  # MANAGED: not ours
    return [
        record.dagster_run
        for record in instance.get_run_records(RunsFilter(statuses=unfinished))
        if record.create_timestamp.timestamp() >= since
    ]


def forget_daemon(instance, since: float) -> None:
    """After stopping the daemon we started: drop its heartbeats, so that the next `pbi backfill`
    does not mistake them (up to HEARTBEAT_STALE_S old) for a live daemon. Only when the latest
    BACKFILL heartbeat is from after `since` (ours: none was alive when we started it)."""
    beat = instance.get_daemon_heartbeats().get(BACKFILL_DAEMON)
    if beat is not None and beat.timestamp >= since:
        instance.wipe_daemon_heartbeats()

"""`pbi backfill`: the asset backfill the UI's "Materialize all -> Launch backfill" makes, launched as
the UI launches it: Dagster's GraphQL mutation `launchPartitionBackfill` (every asset of the
selection, the partitions of one source), run by Dagster's own `dagster-graphql` command against
this code location and the instance in $DAGSTER_HOME. Nothing runs here: the daemon's backfill loop
(`dagster-daemon run`, or the one `dagster dev` starts) turns it into runs, one per partition, then
the unpartitioned assets downstream; at most `concurrency.runs.max_concurrent_runs` at once, their
steps gated by the pools.

`follow_backfill` prints a progress line whenever it changes; `DaemonProcess` is `dagster-daemon run`
in its own process group, for `pbi backfill --wait` on a local instance where no daemon runs.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BACKFILL_DAEMON = "BACKFILL"  # the daemon type whose heartbeat says backfills are being processed
HEARTBEAT_STALE_S = 90.0  # a daemon beats every 30 s
ONGOING = {"REQUESTED", "CANCELING", "FAILING"}  # a backfill's statuses before its end

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}
"""


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

    keys = set(asset_graph.get_all_asset_keys())
    if selection:
        try:
            keys = set(dg.AssetSelection.from_string(selection).resolve(asset_graph))
        except Exception as exc:  # noqa: BLE001 - the selection's parse or resolve error, in one line
            first = next((line for line in str(exc).splitlines() if line.strip()), exc.__class__.__name__)
            raise BackfillError(f"--assets {selection!r}: {first}") from None
        if not keys:
            raise BackfillError(f"--assets {selection!r}: selects no asset")
    return [key for level in asset_graph.toposorted_asset_keys_by_level for key in level if key in keys]


def launch_backfill(source: str, selection: str | None = None, cwd: Path | None = None) -> LaunchedBackfill:
    """Launch a backfill of `selection` (default: every asset) over every partition of `source`."""
    from pbi_assets.definitions import defs
    from pbi_assets.partitions import partition_keys_for_source

    asset_graph = defs.resolve_asset_graph()
    keys = selected_asset_keys(asset_graph, selection)
    partitioned = [k for k in keys if asset_graph.get(k).is_partitioned]
    partitions = [str(k) for k in partition_keys_for_source(source)] if partitioned else []
    what = f" --assets {selection}" if selection else ""
    params = {
        "assetSelection": [{"path": list(k.path)} for k in keys],
        # only unpartitioned assets: "all partitions" is each of them once
        **({"partitionNames": partitions} if partitioned else {"allPartitions": True}),
        "tags": [{"key": "pbi/source", "value": source}],
        "title": f"pbi backfill --source {source}{what}"[:100],
        "description": f"every partition of source {source!r} ({len(partitions)} shards) and the assets downstream",
    }
    result = _graphql(LAUNCH_BACKFILL, {"params": params}, cwd or Path.cwd())["launchPartitionBackfill"]
    if result["__typename"] != "LaunchBackfillSuccess":
        raise BackfillError(f"Dagster refused the backfill: {result.get('message') or result['__typename']}")
    return LaunchedBackfill(
        backfill_id=result["backfillId"],
        partitions=partitions,
        partitioned_assets=[k.to_user_string() for k in partitioned],
        unpartitioned_assets=[k.to_user_string() for k in keys if k not in partitioned],
    )


def _graphql(query: str, variables: dict, cwd: Path) -> dict:
    """`dagster-graphql` on this code location and instance: the query's `data`."""
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "result.json"
        command = [_executable("dagster-graphql"), *workspace_args(cwd), "-t", query, "-v", json.dumps(variables)]
        done = subprocess.run([*command, "-o", str(output)], cwd=cwd, capture_output=True, text=True)
        if done.returncode != 0 or not output.exists():
            tail = " ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise RuntimeError(f"dagster-graphql failed (exit {done.returncode}): {tail}")
        result = json.loads(output.read_text())
    if result.get("errors"):
        raise RuntimeError(f"dagster-graphql: {result['errors'][0].get('message')}")
    return result["data"]


def workspace_args(cwd: Path) -> list[str]:
    """How Dagster's commands load the code location: ./workspace.yaml (what `dagster dev -w
    workspace.yaml` loads), else the module itself."""
    workspace = cwd / "workspace.yaml"
    return ["-w", str(workspace)] if workspace.is_file() else ["-m", "pbi_assets.definitions", "-a", "defs"]


def _executable(name: str) -> str:
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if not found:
        raise BackfillError(f"{name} not found (it comes with dagster and dagster-webserver)")
    return found


# ---------------------------------------------------------------------------------------------
# the daemon


def daemon_alive(instance) -> bool:
    """A daemon processes this instance's backfills: its BACKFILL heartbeat is recent."""
    beat = instance.get_daemon_heartbeats().get(BACKFILL_DAEMON)
    return beat is not None and time.time() - beat.timestamp < HEARTBEAT_STALE_S


class DaemonProcess:
    """`dagster-daemon run` for this DAGSTER_HOME in its own process group (the code server and the
    run workers it launches are in that group too), logging to `log_path`."""

    def __init__(self, log_path: Path, cwd: Path | None = None):
        cwd = cwd or Path.cwd()
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [_executable("dagster-daemon"), "run", *workspace_args(cwd)],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: killpg stops all of it
            )

    def stop(self, grace_s: float = 20.0) -> None:
        """SIGTERM to the process group, SIGKILL after `grace_s`."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            deadline = time.monotonic() + wait_s
            try:
                os.killpg(self.process.pid, sig)
                while time.monotonic() < deadline:
                    self.process.poll()  # reap the leader: a zombie still counts as a member of the group
                    os.killpg(self.process.pid, 0)
                    time.sleep(0.2)
            except ProcessLookupError:
                return


def forget_daemon(instance, since: float) -> None:
    """After stopping the daemon we started: drop its heartbeats, or the next `pbi backfill` takes
    them (up to HEARTBEAT_STALE_S old; Dagster leaves them when a daemon stops) for a live daemon.
    Only when the latest BACKFILL heartbeat is from after `since` (ours: none beat when we started)."""
    beat = instance.get_daemon_heartbeats().get(BACKFILL_DAEMON)
    if beat is not None and beat.timestamp >= since:
        instance.wipe_daemon_heartbeats()


# ---------------------------------------------------------------------------------------------
# following a backfill


@dataclass(frozen=True)
class Progress:
    status: str  # the backfill's status (Dagster's BulkActionStatus value)
    partitions: int
    done: int  # every targeted asset materialized for the partition
    failed: int  # a targeted asset failed for it (or upstream of it)
    running: int  # a run of the backfill for it is in progress
    downstream: int  # unpartitioned assets targeted
    downstream_done: int
    downstream_failed: int
    queued_runs: int

    @property
    def finished(self) -> bool:
        return self.status not in ONGOING

    def line(self, seconds: float, width: int = 24) -> str:
        total = max(self.partitions, 1)
        bar = "#" * round(width * self.done / total) + "x" * round(width * self.failed / total)
        counts = f"{self.done}/{self.partitions} done, {self.failed} failed, {self.running} running"
        parts = [f"[{bar[:width]:.<{width}}] partitions {counts}"]
        if self.downstream:
            parts.append(f"downstream {self.downstream_done}/{self.downstream} done, {self.downstream_failed} failed")
        if self.queued_runs:
            parts.append(f"{self.queued_runs} runs queued")
        return "  " + "; ".join(parts) + f" ({seconds:.0f}s, {self.status.lower()})"


def backfill_progress(instance, backfill_id: str, asset_graph) -> Progress:
    import dagster as dg

    backfill = instance.get_backfill(backfill_id)
    data = backfill.get_asset_backfill_data(asset_graph)

    def by_partition(subset) -> dict:  # partition key (None: unpartitioned) -> its assets
        out = defaultdict(set)
        for asset_partition in subset.iterate_asset_partitions():
            out[asset_partition.partition_key].add(asset_partition.asset_key)
        return out

    target, done = by_partition(data.target_subset), by_partition(data.materialized_subset)
    failed = by_partition(data.failed_and_downstream_subset)
    partitions = [p for p in target if p is not None]
    downstream = target.get(None, set())
    S = dg.DagsterRunStatus
    runs = instance.get_runs(dg.RunsFilter.for_backfill(backfill_id))
    started = {r.tags.get("dagster/partition") for r in runs if r.status in (S.STARTING, S.STARTED)}
    return Progress(
        status=backfill.status.value,
        partitions=len(partitions),
        done=sum(target[p] <= done[p] for p in partitions),
        failed=sum(bool(target[p] & failed[p] - done[p]) for p in partitions),
        running=len(started - {None}),
        downstream=len(downstream),
        downstream_done=len(downstream & done[None]),
        downstream_failed=len(downstream & failed[None] - done[None]),
        queued_runs=sum(r.status in (S.QUEUED, S.NOT_STARTED) for r in runs),
    )


def follow_backfill(
    instance, backfill_id: str, on_poll: Callable[[], None], log=print, poll_s: float = 2.0, heartbeat_s: float = 30.0
) -> Progress:
    """Print a progress line whenever the counts change (and every `heartbeat_s`) until the backfill
    ends; returns the last progress. `on_poll` runs on every poll (e.g. to check the daemon)."""
    from pbi_assets.definitions import defs

    asset_graph = defs.resolve_asset_graph()
    started = time.monotonic()
    last_line, last_print = "", 0.0
    while True:
        on_poll()
        progress = backfill_progress(instance, backfill_id, asset_graph)
        now = time.monotonic()
        if progress.line(0) != last_line or now - last_print >= heartbeat_s or progress.finished:
            log(progress.line(now - started))
            last_line, last_print = progress.line(0), now
        if progress.finished:
            return progress
        time.sleep(poll_s)

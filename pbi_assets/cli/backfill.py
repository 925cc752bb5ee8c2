"""`pbi backfill`: the backfill the UI's "Materialize all -> Launch backfill" makes, launched as the
UI does (the GraphQL mutation `launchPartitionBackfill`, through Dagster's `dagster-graphql`), run
by the daemon. --wait follows it to the end, on a local instance starting a daemon if none beats.
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
from datetime import datetime, timezone
from pathlib import Path

from pbi_assets.cli.errors import UserError, require_source
from pbi_assets.cli.instance import UI_URL, ensure_dagster_home, open_instance, prepare_instance, starts_own_daemon
from pbi_assets.failures import run_failure

BACKFILL_DAEMON = "BACKFILL"  # the daemon type whose heartbeat says backfills are being processed
HEARTBEAT_STALE_S = 90.0  # a daemon beats every 30 s
LAUNCH_BACKFILL = (
    "mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) "
    "{ __typename ... on LaunchBackfillSuccess { backfillId } ... on Error { message } } }"
)
NO_LOCAL_DAEMON = (
    "     no Dagster daemon is running for this DAGSTER_HOME: the backfill starts when one does "
    "(`dagster dev -w workspace.yaml`, or `dagster-daemon run -w workspace.yaml`); "
    "or rerun with --wait, which starts one for the duration"
)
NO_DEPLOYMENT_DAEMON = (
    "     no Dagster daemon heartbeats for the instance in {home}: it is the deployment's, and pbi does not "
    "start one for it; the backfill starts when the deployment's daemon runs (kubectl get pods: the "
    "dagster-daemon pod)"
)


def cmd_backfill(args) -> int:
    from pbi_assets.definitions import defs
    from pbi_assets.partitions import PROJECT, partition_keys_for_source  # reads the config

    require_source(PROJECT.source_names, args.source)
    home = ensure_dagster_home()

    instance = open_instance()
    prepare_instance(instance)
    asset_graph = defs.resolve_asset_graph()
    keys = selected_asset_keys(asset_graph, args.assets)
    partitioned = [k.to_user_string() for k in keys if asset_graph.get(k).is_partitioned]
    downstream = [k.to_user_string() for k in keys if not asset_graph.get(k).is_partitioned]
    partitions = [str(k) for k in partition_keys_for_source(args.source)] if partitioned else []
    backfill_id = launch_backfill(args.source, keys, partitions, args.assets)
    what = f"{len(partitions)} partitions x {len(partitioned)} assets" if partitions else "no partitioned asset"
    then = f", then {', '.join(downstream)}" if downstream else ""
    print(f"PBI: backfill {backfill_id} of source {args.source!r}: {what}{then}")
    print(f"     data root {PROJECT.data_root}; Dagster runs recorded in {home}")
    print(f"     follow it in the UI: {UI_URL}/runs/b/{backfill_id}")
    own = starts_own_daemon(instance)
    if args.wait:
        return _wait_for_backfill(instance, backfill_id, home, own)
    if daemon_alive(instance):
        print("     the Dagster daemon runs it (partitions concurrently, gated by the pools)")
    else:
        print(NO_LOCAL_DAEMON if own else NO_DEPLOYMENT_DAEMON.format(home=home))
    return 0


def selected_asset_keys(asset_graph, selection: str | None) -> list:
    """The asset keys of a Dagster asset selection string (`key:pairs+`, `group:removal`...), or
    every asset of the project; in topological order."""
    import dagster as dg

    keys = set(asset_graph.get_all_asset_keys())
    if selection:
        try:
            keys = set(dg.AssetSelection.from_string(selection).resolve(asset_graph))
        except Exception as exc:  # noqa: BLE001 - the selection's parse or resolve error, in one line
            first = next((line for line in str(exc).splitlines() if line.strip()), exc.__class__.__name__)
            raise UserError(f"--assets {selection!r}: {first}") from None
        if not keys:
            raise UserError(f"--assets {selection!r}: selects no asset")
    return [key for level in asset_graph.toposorted_asset_keys_by_level for key in level if key in keys]


def launch_backfill(source: str, keys: list, partitions: list[str], selection: str | None) -> str:
    """Launch the backfill of the asset `keys` over `partitions` (none: the assets are unpartitioned);
    returns its id."""
    what = f" --assets {selection}" if selection else ""
    params = {
        "assetSelection": [{"path": list(k.path)} for k in keys],
        **({"partitionNames": partitions} if partitions else {"allPartitions": True}),  # none: each asset once
        "tags": [{"key": "pbi/source", "value": source}],
        "title": f"pbi backfill --source {source}{what}"[:100],
    }
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "result.json"
        command = [*dagster_command("dagster-graphql"), "-t", LAUNCH_BACKFILL, "-o", str(output)]
        done = subprocess.run([*command, "-v", json.dumps({"params": params})], capture_output=True, text=True)
        if done.returncode != 0 or not output.exists():
            tail = " ".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"dagster-graphql failed (exit {done.returncode}): {tail}")
        answer = json.loads(output.read_text())
    result = (answer.get("data") or {}).get("launchPartitionBackfill") or {}
    if result.get("__typename") != "LaunchBackfillSuccess":
        reason = result.get("message") or (answer.get("errors") or [{}])[0].get("message")
        raise RuntimeError(f"Dagster refused the backfill: {reason}")
    return result["backfillId"]


def dagster_command(name: str) -> list[str]:
    """Dagster's command `name` (beside this Python, else on PATH), loading the code location as
    `dagster dev -w workspace.yaml` does (else the module itself)."""
    beside = Path(sys.executable).with_name(name)
    executable = str(beside) if beside.exists() else shutil.which(name) or name
    workspace = Path("workspace.yaml").is_file()
    return [executable, *(["-w", "workspace.yaml"] if workspace else ["-m", "pbi_assets.definitions", "-a", "defs"])]


def daemon_alive(instance) -> bool:
    """A daemon processes this instance's backfills: its BACKFILL heartbeat is recent."""
    beat = instance.get_daemon_heartbeats().get(BACKFILL_DAEMON)
    return beat is not None and time.time() - beat.timestamp < HEARTBEAT_STALE_S


def start_daemon(log_path: Path) -> subprocess.Popen:
    """`dagster-daemon run` in its own process group (with its code server and run workers), logging
    to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    executable, *workspace = dagster_command("dagster-daemon")
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            [executable, "run", *workspace],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def stop_daemon(daemon: subprocess.Popen, instance, since: float, grace_s: float = 20.0) -> None:
    """SIGTERM to the daemon's process group, SIGKILL after `grace_s`; then drop the heartbeats it
    left (if the last is from after `since`), or the next `pbi backfill` takes them for a live one."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        deadline = time.monotonic() + wait_s
        try:
            os.killpg(daemon.pid, sig)
            while time.monotonic() < deadline:
                daemon.poll()  # reap the leader: a zombie still counts as a member of the group
                os.killpg(daemon.pid, 0)
                time.sleep(0.2)
        except ProcessLookupError:
            break
    beat = instance.get_daemon_heartbeats().get(BACKFILL_DAEMON)
    if beat is not None and beat.timestamp >= since:
        instance.wipe_daemon_heartbeats()


def _wait_for_backfill(instance, backfill_id: str, home: Path, own: bool) -> int:
    """Follow the backfill to its end; for a local instance (`own`) with no daemon beating, run one
    until the backfill and the runs it launched meanwhile have ended."""
    import dagster as dg

    daemon: subprocess.Popen | None = None
    since, warned, log = time.time(), False, home / "pbi-daemon" / f"{backfill_id}.log"

    def check_daemon() -> None:
        nonlocal daemon, warned
        if daemon is not None and daemon.poll() is not None:
            raise RuntimeError(f"the daemon this command started exited; its log: {log}")
        if daemon is None and not daemon_alive(instance):
            if own:
                daemon = start_daemon(log)
                print(
                    f"     no Dagster daemon was running: started `dagster-daemon run` for this backfill "
                    f"(pid {daemon.pid}, log {log}); it stops when the backfill ends"
                )
            elif not warned:
                print(NO_DEPLOYMENT_DAEMON.format(home=home))
                warned = True

    if not own:
        print(
            "     the deployment's Dagster daemon runs it; following it here (Ctrl-C stops following, not the backfill)"
        )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        status = _follow(instance, backfill_id, check_daemon)
        if daemon is not None:
            _let_daemon_runs_finish(instance, since)
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: backfill {backfill_id} stays; it goes on whenever a Dagster daemon runs "
            f"(cancel it in the UI: {UI_URL}/runs/b/{backfill_id})"
        )
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if daemon is not None:
            print(f"     stopping the daemon this command started (process group {daemon.pid})")
            stop_daemon(daemon, instance, since)
    runs = instance.get_runs(dg.RunsFilter.for_backfill(backfill_id))
    failed = [run for run in runs if run.status in (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)]
    for run in failed[:10]:
        partition = run.tags.get("dagster/partition", "unpartitioned")
        print(f"  run {run.run_id[:8]} ({partition}): {run.status.value}: {run_failure(instance, run.run_id).line()}")
        print(f"    logs: {UI_URL}/runs/{run.run_id}")
    ok = status == "COMPLETED_SUCCESS" and not failed
    print(f"\nbackfill {backfill_id}: {status.lower()}" + ("" if ok else f", {len(failed)} run(s) failed"))
    return 0 if ok else 1


def _follow(instance, backfill_id: str, on_poll, poll_s: float = 2.0, heartbeat_s: float = 30.0) -> str:
    """A progress line whenever it changes (and every `heartbeat_s`) until the backfill ends; its last
    status. `on_poll` runs on every poll."""
    from pbi_assets.definitions import defs

    asset_graph = defs.resolve_asset_graph()
    started, last_line, last_print = time.monotonic(), "", 0.0
    while True:
        on_poll()
        status, line = progress(instance, backfill_id, asset_graph)
        ended = status not in ("REQUESTED", "CANCELING", "FAILING")  # a backfill's statuses before its end
        now = time.monotonic()
        if line != last_line or now - last_print >= heartbeat_s or ended:
            print(f"  {line} ({now - started:.0f}s, {status.lower()})", flush=True)
            last_line, last_print = line, now
        if ended:
            return status
        time.sleep(poll_s)


def progress(instance, backfill_id: str, asset_graph, width: int = 24) -> tuple[str, str]:
    """(the backfill's status, a line of counts): partitions done, failed (an asset or one upstream
    of it), running; the unpartitioned assets downstream; runs queued."""
    import dagster as dg

    backfill = instance.get_backfill(backfill_id)
    data = backfill.get_asset_backfill_data(asset_graph)

    def by_partition(subset) -> defaultdict:  # partition key (None: unpartitioned) -> its assets
        out = defaultdict(set)
        for asset_partition in subset.iterate_asset_partitions():
            out[asset_partition.partition_key].add(asset_partition.asset_key)
        return out

    target, done = by_partition(data.target_subset), by_partition(data.materialized_subset)
    failed = by_partition(data.failed_and_downstream_subset)
    partitions = [p for p in target if p is not None]
    n_done = sum(target[p] <= done[p] for p in partitions)
    n_failed = sum(bool(target[p] & failed[p] - done[p]) for p in partitions)
    S = dg.DagsterRunStatus
    runs = instance.get_runs(dg.RunsFilter.for_backfill(backfill_id))
    running = {r.tags.get("dagster/partition") for r in runs if r.status in (S.STARTING, S.STARTED)} - {None}
    total = max(len(partitions), 1)
    bar = ("#" * round(width * n_done / total) + "x" * round(width * n_failed / total))[:width]
    counts = f"{n_done}/{len(partitions)} done, {n_failed} failed, {len(running)} running"
    parts = [f"[{bar:.<{width}}] partitions {counts}"]
    if downstream := target[None]:
        broken = len(downstream & failed[None] - done[None])
        parts.append(f"downstream {len(downstream & done[None])}/{len(downstream)} done, {broken} failed")
    if queued := sum(r.status in (S.QUEUED, S.NOT_STARTED) for r in runs):
        parts.append(f"{queued} runs queued")
    return backfill.status.value, "; ".join(parts)


def _let_daemon_runs_finish(instance, since: float, timeout_s: float = 300.0) -> None:
    """Let the runs the daemon launched meanwhile (the catalog's sensor) end: stopping it kills them."""
    import dagster as dg

    S = dg.DagsterRunStatus
    unfinished = [S.QUEUED, S.NOT_STARTED, S.STARTING, S.STARTED, S.CANCELING]
    in_flight = dg.RunsFilter(statuses=unfinished, created_after=datetime.fromtimestamp(since, tz=timezone.utc))
    deadline, told = time.monotonic() + timeout_s, False
    while (runs := instance.get_runs(in_flight)) and time.monotonic() < deadline:
        if not told:
            names = ", ".join(f"{r.job_name} {r.run_id[:8]}" for r in runs)
            print(f"  waiting for {len(runs)} other run(s) the daemon launched meanwhile to end: {names}")
            told = True
        time.sleep(2.0)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt

"""`pbi backfill`: launch a real Dagster asset backfill of a source (pbi_assets.backfill) and, with
--wait, follow it to the end, starting a daemon for a local instance when none runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from pbi_assets.cli.errors import UserError, require_source
from pbi_assets.cli.instance import UI_URL, ensure_dagster_home, prepare_instance, starts_own_daemon
from pbi_assets.failures import run_failure


def cmd_backfill(args) -> int:
    from pbi_assets.partitions import PROJECT  # reads the config: an error names the file and field

    require_source(PROJECT.source_names, args.source)
    home = ensure_dagster_home()
    import dagster as dg

    from pbi_assets import backfill as bf

    instance = dg.DagsterInstance.get()
    prepare_instance(instance)
    try:
        launched = bf.launch_backfill(args.source, args.assets)
    except bf.BackfillError as exc:
        raise UserError(str(exc)) from None
    what = f"{len(launched.partitions)} partitions x {len(launched.partitioned_assets)} assets"
    what = what if launched.partitions else "no partitioned asset"
    downstream = f", then {', '.join(launched.unpartitioned_assets)}" if launched.unpartitioned_assets else ""
    print(f"PBI: backfill {launched.backfill_id} of source {args.source!r}: {what}{downstream}")
    print(f"     data root {PROJECT.data_root}; Dagster runs recorded in {home}")
    print(f"     follow it in the UI: {UI_URL}/runs/b/{launched.backfill_id}")
    own = starts_own_daemon(instance)
    if args.wait:
        return _wait_for_backfill(instance, launched.backfill_id, home, own)
    if bf.daemon_alive(instance):
        print("     the Dagster daemon runs it (partitions concurrently, gated by the pools)")
    elif own:
        print(
            "     no Dagster daemon is running for this DAGSTER_HOME: the backfill starts when one does "
            "(`dagster dev -w workspace.yaml`, or `dagster-daemon run -w workspace.yaml`); "
            "or rerun with --wait, which starts one for the duration"
        )
    else:
        print(_NO_DEPLOYMENT_DAEMON.format(home=home))
    return 0


_NO_DEPLOYMENT_DAEMON = (
    "     no Dagster daemon heartbeats for the instance in {home}: it is the deployment's, and pbi does not "
    "start one for it; the backfill starts when the deployment's daemon runs (kubectl get pods: the "
    "dagster-daemon pod)"
)


def _wait_for_backfill(instance, backfill_id: str, home: Path, own: bool) -> int:
    """Follow the backfill to its end. For a local instance (`own`) start `dagster-daemon run` when
    none heartbeats (also later, if the one that ran stops), and stop it once the backfill and the
    runs it launched meanwhile have ended."""
    import dagster as dg

    from pbi_assets import backfill as bf

    daemon: bf.DaemonProcess | None = None
    since, warned = time.time(), False

    def check_daemon() -> None:
        nonlocal daemon, warned
        if daemon is not None and daemon.process.poll() is not None:
            raise RuntimeError(f"the daemon this command started exited; its log: {daemon.log_path}")
        if daemon is None and not bf.daemon_alive(instance):
            if own:
                daemon = bf.DaemonProcess(home / "pbi-daemon" / f"{backfill_id}.log")
                print(
                    f"     no Dagster daemon was running: started `dagster-daemon run` for this backfill "
                    f"(pid {daemon.process.pid}, log {daemon.log_path}); it stops when the backfill ends"
                )
            elif not warned:
                print(_NO_DEPLOYMENT_DAEMON.format(home=home))
                warned = True

    if not own:
        print(
            "     the deployment's Dagster daemon runs it; following it here (Ctrl-C stops following, not the backfill)"
        )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        progress = bf.follow_backfill(instance, backfill_id, on_poll=check_daemon)
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
            print(f"     stopping the daemon this command started (process group {daemon.process.pid})")
            daemon.stop()
            bf.forget_daemon(instance, since)
    S = dg.DagsterRunStatus
    failed = [
        r for r in instance.get_runs(dg.RunsFilter.for_backfill(backfill_id)) if r.status in (S.FAILURE, S.CANCELED)
    ]
    for run in failed[:10]:
        partition = run.tags.get("dagster/partition", "unpartitioned")
        print(f"  run {run.run_id[:8]} ({partition}): {run.status.value}: {run_failure(instance, run.run_id).line()}")
        print(f"    logs: {UI_URL}/runs/{run.run_id}")
    ok = progress.status == "COMPLETED_SUCCESS" and not (failed or progress.failed or progress.downstream_failed)
    print(f"\nbackfill {backfill_id}: {progress.status.lower()}" + ("" if ok else f", {len(failed)} run(s) failed"))
    return 0 if ok else 1


def _let_daemon_runs_finish(instance, since: float, timeout_s: float = 300.0) -> None:
    """Stopping the daemon kills the workers of its runs: let those it launched meanwhile besides the
    backfill's (the catalog's automation sensor) end first."""
    from datetime import datetime, timezone

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

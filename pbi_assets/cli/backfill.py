"""`pbi backfill`: store a real Dagster asset backfill of a source (pbi_assets.backfill) and, with
--wait, follow it to the end, starting a daemon for a local instance when none runs."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pbi_assets.cli.errors import UserError, require_source
from pbi_assets.cli.instance import UI_URL, ensure_dagster_home, prepare_instance, starts_own_daemon
from pbi_assets.failures import run_failure


def cmd_backfill(args) -> int:
    """A real Dagster asset backfill over every partition of the source (see pbi_assets.backfill)."""
    from pbi_assets.partitions import PROJECT  # reads the config: an error names the file and field

    require_source(PROJECT.source_names, args.source)
    home = ensure_dagster_home()
    import dagster as dg

    from pbi_assets import backfill as bf

    instance = dg.DagsterInstance.get()
    prepare_instance(instance)
    try:
        launched = bf.launch_backfill(instance, args.source, args.assets)
    except bf.BackfillError as exc:
        raise UserError(str(exc)) from None
    what = (
        f"{len(launched.partitions)} partitions x {len(launched.partitioned_assets)} assets"
        if launched.partitions
        else "no partitioned asset"
    )
    downstream = f", then {', '.join(launched.unpartitioned_assets)}" if launched.unpartitioned_assets else ""
    print(f"PBI: backfill {launched.backfill_id} of source {args.source!r}: {what}{downstream}")
    print(f"     data root {PROJECT.data_root}; Dagster runs recorded in {home}")
    print(f"     follow it in the UI: {UI_URL}/runs/b/{launched.backfill_id}")
    if not args.wait:
        if bf.daemon_alive(instance):
            print("     the Dagster daemon runs it (partitions concurrently, gated by the pools)")
        elif not starts_own_daemon(instance):
            print(_no_deployment_daemon())
        else:
            print(
                "     no Dagster daemon is running for this DAGSTER_HOME: the backfill starts when one does "
                "(`dagster dev -w workspace.yaml`, or `dagster-daemon run -w workspace.yaml`); "
                "or rerun with --wait, which starts one for the duration"
            )
        return 0
    return _wait_for_backfill(instance, launched.backfill_id, home)


def _wait_for_backfill(instance, backfill_id: str, home: Path) -> int:
    """Follow the backfill to its end, starting a daemon (and stopping it after) if none runs."""
    import signal

    from pbi_assets import backfill as bf

    daemon: bf.DaemonProcess | None = None
    since = time.time()

    def start_daemon(why: str) -> None:
        nonlocal daemon
        daemon = bf.DaemonProcess(home / "pbi-daemon" / f"{backfill_id}.log")
        daemon.start()
        print(f"     {why}: started `dagster-daemon run` for this backfill (pid {daemon.pid}, log {daemon.log_path});")
        print("     it stops when the backfill ends")

    own = starts_own_daemon(instance)
    warned = False

    def check_daemon() -> None:
        nonlocal warned
        if daemon is None:
            if not bf.daemon_alive(instance):
                if own:
                    start_daemon("the Dagster daemon stopped heartbeating")
                elif not warned:
                    print(_no_deployment_daemon())
                    warned = True
        elif daemon.exited() is not None:
            raise RuntimeError(
                f"the daemon this command started exited (code {daemon.exited()}); its log: {daemon.log_path}"
            )

    if own and not bf.daemon_alive(instance):
        start_daemon("no Dagster daemon was running")
    elif not own:
        print(
            "     the deployment's Dagster daemon runs it; following it here (Ctrl-C stops following, not the backfill)"
        )
        check_daemon()
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
            print(f"     stopping the daemon this command started (process group {daemon.pid})")
            daemon.stop()
            bf.forget_daemon(instance, since)
    failed = bf.failed_runs(instance, backfill_id)
    for run in failed[:10]:
        reason = run_failure(instance, run.run_id).line()
        print(
            f"  run {run.run_id[:8]} ({run.tags.get('dagster/partition', 'unpartitioned')}): {run.status.value}: {reason}"
        )
        print(f"    logs: {UI_URL}/runs/{run.run_id}")
    ok = (
        progress.status == "COMPLETED_SUCCESS" and not failed and not progress.failed and not progress.downstream_failed
    )
    print(f"\nbackfill {backfill_id}: {progress.status.lower()}" + ("" if ok else f", {len(failed)} run(s) failed"))
    return 0 if ok else 1


def _no_deployment_daemon() -> str:
    home = os.environ.get("DAGSTER_HOME", ".dagster_home")
    return (
        f"     no Dagster daemon heartbeats for the instance in {home}: it is the deployment's, and pbi does not "
        "start one for it; the backfill starts when the deployment's daemon runs (kubectl get pods: the "
        "dagster-daemon pod)"
    )


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _let_daemon_runs_finish(instance, since: float, timeout_s: float = 300.0) -> None:
    """Runs the daemon launched meanwhile besides the backfill's (the catalog's automation sensor)
    finish before it stops: stopping it kills their workers."""
    from pbi_assets.backfill import runs_in_flight_since

    deadline = time.monotonic() + timeout_s
    told = False
    while time.monotonic() < deadline:
        runs = runs_in_flight_since(instance, since)
        if not runs:
            return
        if not told:
            names = ", ".join(f"{r.job_name} {r.run_id[:8]}" for r in runs)
            print(f"  waiting for {len(runs)} other run(s) the daemon launched meanwhile to end: {names}")
            told = True
        time.sleep(2.0)

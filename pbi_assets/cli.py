"""`pbi`: run the asset graph for a source through Dagster, and query the catalog.

    pbi run --source demo            materialize every asset for every shard of `demo`
    pbi backfill --source demo --wait  the same as a Dagster backfill: the daemon runs shards concurrently
    pbi check [--source NAME]        validate pbi.yaml and the sources' files in seconds, before a run
    pbi sql "SELECT ... FROM pairs"  read-only SQL on the DuckDB catalog
    pbi info                         data root, sources, shards, DAGSTER_HOME

An error in your input (pbi.yaml, a file, the SQL, a source name) is printed in one or two lines
naming the problem and the file or field, with a non-zero exit; a failed partition names its step,
the reason and where its logs are in the UI. `pbi --debug ...` shows the full traceback instead.

Runs go through the Dagster instance in $DAGSTER_HOME (default ./.dagster_home, created from the
packaged dagster.yaml template), so they show up in the UI (`dagster dev -w workspace.yaml`). In a
Kubernetes pod (or with PBI_EXECUTOR=k8s) the instance must be the deployment's: a missing
$DAGSTER_HOME/dagster.yaml is an error there, and `backfill --wait` leaves the runs to its daemon.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from pbi_assets.failures import run_failure
from pbi_assets.pools import initialize_pools, pools_of
from pbi_assets.run_health import PoolWaitReporter, cleanup_dead_runs, process_tags

UI_URL = "http://127.0.0.1:3000"  # where `dagster dev -w workspace.yaml` serves the UI by default


class UserError(Exception):
    """A problem in the user's input (a file, an argument): printed as its message, no traceback."""


def in_cluster() -> bool:
    """A deployment's instance is expected: running in a Kubernetes pod (the kubelet sets
    KUBERNETES_SERVICE_HOST in every container) or with steps as pods ($PBI_EXECUTOR=k8s)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or os.environ.get("PBI_EXECUTOR", "").strip() == "k8s"


def ensure_dagster_home() -> Path:
    """$DAGSTER_HOME (default ./.dagster_home), with its dagster.yaml. Locally a missing one is made
    from the packaged SQLite template; where a deployment's instance is expected (`in_cluster`) a
    missing one is an error naming the file to mount, never a private SQLite instance."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    target = home / "dagster.yaml"
    if not target.exists():
        if in_cluster():
            raise UserError(
                f"no Dagster instance: {target} does not exist; in Kubernetes pbi uses the deployment's instance, "
                "so mount the chart's instance ConfigMap (<release>-dagster-instance, key dagster.yaml) there "
                "and set DAGSTER_HOME (deploy/values.yaml does both for the code server); for a private local "
                "instance instead, copy the template pbi_assets/dagster.yaml there yourself"
            )
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).with_name("dagster.yaml"), target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def starts_own_daemon(instance) -> bool:
    """Whether `pbi backfill --wait` may start a `dagster-daemon` when none heartbeats: only for a
    local instance, i.e. outside a cluster (`in_cluster`) and with Dagster's DefaultRunLauncher
    (runs are processes on this machine). A deployment's instance (K8sRunLauncher, or any other
    launcher) has its own daemon; pbi only follows the backfill there."""
    import dagster as dg

    return not in_cluster() and type(instance.run_launcher) is dg.DefaultRunLauncher


def _load_run_config(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    try:
        config = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise UserError(f"--run-config {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--run-config {path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--run-config {path}: not valid YAML: {exc}") from None
    if not isinstance(config, dict):
        raise UserError(f"--run-config {path}: top level must be a mapping ({{ops: {{<stage>: {{config: ...}}}}}})")
    return config


def _with_log_level(run_config: dict, level: str) -> dict:
    """Dagster's in-process console logger at `level` (DEBUG shows every event)."""
    config = dict(run_config)
    config.setdefault("loggers", {"console": {"config": {"log_level": level}}})
    return config


def run_source(
    source: str, run_config: dict | None = None, shards: list[str] | None = None, log=print, log_level: str = "WARNING"
) -> dict:
    """Materialize the partitioned assets for each shard of `source`, then the unpartitioned ones.
    Runs whose process died are failed first (their pool slots freed); while a step waits for a
    pool slot, a line every $PBI_POOL_WAIT_LOG_SECONDS (30) says who holds it.
    Returns {"runs": [...], "failed": [...], "skipped": {asset: why}}; a failed run's step and
    reason, and where its logs are, are logged in two lines."""
    import dagster as dg

    from pbi_assets.partitions import PROJECT

    _require_source(PROJECT.source_names, source)
    instance = dg.DagsterInstance.get()
    prepare_instance(instance, log=log)
    with PoolWaitReporter(instance, log=log):
        return _materialize_all(instance, source, run_config or {}, shards or PROJECT.shard_keys, log, log_level)


def _require_source(declared: list[str], source: str) -> None:
    if source not in declared:
        raise UserError(f"unknown source {source!r}; declared in the config: {', '.join(declared)}")


def skipped_assets(result) -> dict[str, str]:
    """asset -> why, for each materialization whose `skipped` metadata says it did nothing."""
    skipped = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        value = materialization.metadata.get("skipped")
        if value is not None:
            skipped[materialization.asset_key.to_user_string()] = str(getattr(value, "value", value))
    return skipped


def _failure_lines(instance, run_id: str, what: str, seconds: float) -> list[str]:
    """Two lines for a failed run: which partition, which step (or Dagster's reason when the run
    failed outside any step) and why; where its logs are."""
    failure = run_failure(instance, run_id)
    first = f"  {what}: FAILED in {seconds:.1f}s {failure.line()}"
    where = f"Runs → {run_id[:8]}" + (f" → the {failure.step} step's logs" if failure.step else "")
    ui = f"DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '.dagster_home')} dagster dev -w workspace.yaml"
    return [first, f"    logs: {UI_URL}/runs/{run_id} (start the UI: `{ui}`; then {where})"]


def prepare_instance(instance, log=print) -> list:
    """Before launching runs (`pbi run`, a backfill): fail the runs whose process died and free the
    pool slots they hold, one line each (see `pbi_assets.run_health`), and give every pool the
    definitions use its limit row (see `pbi_assets.pools`: two processes starting at once on a
    fresh Postgres instance would otherwise race to create it, and one run would die)."""
    from pbi_assets.definitions import defs

    cleaned = cleanup_dead_runs(instance)
    for item in cleaned:
        log(f"  {item.line()}")
    initialize_pools(instance, pools_of(defs.assets or []))
    return cleaned


def _materialize_all(instance, source: str, run_config: dict, shards: list[str], log, log_level: str) -> dict:
    import dagster as dg

    from pbi_assets.definitions import PARTITIONED_ASSETS, UNPARTITIONED_ASSETS, defs

    everything = [*(defs.assets or []), *(defs.asset_checks or [])]
    all_assets = [a for a in everything if isinstance(a, dg.AssetsDefinition | dg.AssetSpec | dg.SourceAsset)]
    resources = dict(defs.resources or {})
    summary: dict = {"runs": [], "failed": [], "skipped": {}}
    for shard in shards:
        key = dg.MultiPartitionKey({"source": source, "shard": shard})
        started = time.monotonic()
        result = dg.materialize(
            all_assets,
            selection=PARTITIONED_ASSETS,
            partition_key=key,
            instance=instance,
            resources=resources,
            run_config=_with_log_level(_ops_subset(run_config, PARTITIONED_ASSETS), log_level),
            raise_on_error=False,
            tags={"pbi/source": source, "pbi/shard": shard, **process_tags()},
        )
        summary["runs"].append(result.run_id)
        seconds = time.monotonic() - started
        if result.success:
            log(f"  {source}|{shard}: ok in {seconds:.1f}s (run {result.run_id[:8]})")
        else:
            for line in _failure_lines(instance, result.run_id, f"{source}|{shard}", seconds):
                log(line)
            summary["failed"].append(f"{source}|{shard}")
    if summary["failed"]:
        log("  some partitions failed; the unpartitioned assets still run on what exists")
    started = time.monotonic()
    result = dg.materialize(
        all_assets,
        selection=UNPARTITIONED_ASSETS,
        instance=instance,
        resources=resources,
        run_config=_with_log_level(_ops_subset(run_config, UNPARTITIONED_ASSETS), log_level),
        raise_on_error=False,
        tags={"pbi/source": source, **process_tags()},
    )
    summary["runs"].append(result.run_id)
    names = ", ".join(a.key.to_user_string() for a in UNPARTITIONED_ASSETS)
    if result.success:
        log(f"  {names}: ok in {time.monotonic() - started:.1f}s (run {result.run_id[:8]})")
    else:
        for line in _failure_lines(instance, result.run_id, names, time.monotonic() - started):
            log(line)
        summary["failed"].append("unpartitioned")
    summary["skipped"] = skipped_assets(result)
    for asset, why in summary["skipped"].items():
        log(f"  {asset}: skipped: {why}")
    return summary


def _ops_subset(run_config: dict, assets) -> dict:
    ops = run_config.get("ops") or {}
    names = {a.key.to_python_identifier() for a in assets}
    subset = {k: v for k, v in ops.items() if k in names}
    return {"ops": subset} if subset else {}


def cmd_run(args) -> int:
    run_config = _load_run_config(args.run_config)
    from pbi_assets.partitions import PROJECT  # reads the config: an error names the file and field

    _require_source(PROJECT.source_names, args.source)
    unknown = sorted(set(args.shard or []) - set(PROJECT.shard_keys))
    if unknown:
        keys = PROJECT.shard_keys
        raise UserError(f"--shard {unknown[0]}: not a shard of this project (shards {keys[0]} to {keys[-1]})")
    home = ensure_dagster_home()
    print(f"PBI: running source {args.source!r} ({PROJECT.num_shards} shards), data root {PROJECT.data_root}")
    print(f"     Dagster runs recorded in {home}")
    # Dagster's console logger prints a failed step's whole traceback: pbi prints the two lines
    # that matter itself, and shows Dagster's log only with --verbose (every event) or --debug
    log_level = "DEBUG" if args.verbose else "WARNING" if args.debug else "CRITICAL"
    import dagster as dg

    try:
        summary = run_source(args.source, run_config, args.shard or None, log_level=log_level)
    except dg.DagsterInvalidConfigError as exc:  # the run config does not fit the assets' config schema
        problems = [e.message for e in exc.errors] or [str(exc)]
        more = f" ({len(problems) - 1} more problems)" if len(problems) > 1 else ""
        first, _, expected = problems[0].partition(" Expected: ")
        raise UserError(
            f"--run-config {args.run_config}: {first}{more}" + (f"\n  expected: {expected}" if expected else "")
        ) from None
    print()
    print_summary(args.source)
    if summary["skipped"].get("checkpoint"):
        print(f"\nnothing was trained: {summary['skipped']['checkpoint']}")
    if summary["failed"]:
        print(
            f"\n{len(summary['failed'])} run(s) failed: {', '.join(summary['failed'])} (the logs: see the lines above)"
        )
        return 1
    return 0


def cmd_backfill(args) -> int:
    """A real Dagster asset backfill over every partition of the source (see pbi_assets.backfill)."""
    from pbi_assets.partitions import PROJECT  # reads the config: an error names the file and field

    _require_source(PROJECT.source_names, args.source)
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


def print_summary(source: str) -> None:
    from pbi_assets.partitions import PROJECT
    from pbi_ml.catalog import query
    from pbi_ml.storage import Storage

    storage = Storage(PROJECT.data_root)
    try:
        frame = query(storage, _summary_sql(source))
    except Exception as exc:  # noqa: BLE001 - a summary must not hide the run's own status
        print(f"(no summary: {exc})")
        return
    print(frame.to_string(index=False))
    try:
        evals = query(
            storage,
            "SELECT e.checkpoint_id, e.benchmark, e.n, round(e.l1, 4) AS l1, round(e.l2, 4) AS l2, e.clip_i, e.dino, "
            "c.steps, c.smoke_model FROM evaluations e JOIN checkpoints c USING (checkpoint_id) ORDER BY 1, 2",
        )
    except Exception:  # noqa: BLE001 - no evaluation yet
        return
    if len(evals):
        print()
        print("evaluation (model metrics are null, with the reason in the catalog, when their weights are absent):")
        print(evals.to_string(index=False))


def _summary_sql(source: str) -> str:
    s = source.replace("'", "''")
    return (
        f"SELECT 'instances' AS what, count(*) AS n FROM candidates WHERE source = '{s}' "
        f"UNION ALL SELECT 'candidates kept', count(*) FROM candidates WHERE source = '{s}' AND kept "
        f"UNION ALL SELECT 'removal candidates', count(*) FROM removals WHERE source = '{s}' AND status = 'ok' "
        f"UNION ALL SELECT 'pairs', count(*) FROM pairs WHERE source = '{s}' "
        f"UNION ALL SELECT 'pairs in test split', count(*) FROM pairs WHERE source = '{s}' AND split = 'test'"
    )


def cmd_sql(args) -> int:
    import duckdb
    import pandas as pd

    from pbi_ml.catalog import query
    from pbi_ml.config import project_config  # what the code location reads, without importing Dagster
    from pbi_ml.storage import Storage

    try:
        frame = query(Storage(project_config().data_root), args.query)
    except duckdb.Error as exc:
        raise UserError(f"SQL error: {exc}") from None
    with pd.option_context(
        "display.max_rows", args.max_rows, "display.max_columns", None, "display.width", 200, "display.max_colwidth", 60
    ):
        print(frame.to_string(index=False, max_rows=args.max_rows))
    return 0


def cmd_calibrate_sample(args) -> int:
    from pbi_assets.partitions import PROJECT
    from pbi_ml.calibration import sample_for_labelling
    from pbi_ml.storage import Storage

    out = sample_for_labelling(PROJECT, Storage(PROJECT.data_root), args.out, n=args.n, seed=args.seed)
    print(f"wrote {out / 'labels.csv'} and {out / 'sheet.html'}")
    print("open sheet.html in a browser, label each row (1 = removed cleanly, 0 = not), download labels.csv, then:")
    print(f"  pbi calibrate fit {out / 'labels.csv'} --column clip_removal_sim")
    return 0


def cmd_calibrate_fit(args) -> int:
    import pandas as pd

    from pbi_ml.calibration import THRESHOLD_FIELDS, plateau_threshold, plot_path, plot_threshold_curve, threshold_curve

    curve = threshold_curve(pd.read_csv(args.labels), args.column)
    step = max(1, len(curve) // 25)
    print(curve.iloc[::step].to_string(index=False))
    threshold = plateau_threshold(curve, tolerance=args.tolerance)
    print(f"\nplateau threshold for {args.column}: {threshold:.4g}")
    print(f"set it in pbi.yaml:  stages: {{removal_scores: {{{THRESHOLD_FIELDS[args.column]}: {threshold:.4g}}}}}")
    plot = plot_threshold_curve(curve, args.column, threshold, plot_path(args.labels, args.column), args.tolerance)
    print(f"plot: {plot}")
    return 0


def cmd_check(args) -> int:
    """Validate pbi.yaml and the declared sources (or one); exit 1 on a fatal problem."""
    from pbi_ml.check import check_project, report_lines
    from pbi_ml.config import default_config_path, project_config

    project = project_config()
    if args.source is not None:
        _require_source(project.source_names, args.source)
    if args.sample < 0:
        raise UserError(f"--sample {args.sample}: must be >= 0")
    path = default_config_path()
    where = str(path.resolve()) if path.exists() else "no pbi.yaml (the bundled demo source only)"
    print(f"config {where}: {len(project.sources)} sources, {project.num_shards} shards, data root {project.data_root}")
    report = check_project(project, source=args.source, sample=args.sample, seed=args.seed)
    for line in report_lines(report):
        print(line)
    return 1 if report.fatal else 0


def cmd_info(args) -> int:
    from pbi_ml.config import project_config  # what the code location reads, without importing Dagster

    project = project_config()

    print(f"data_root:   {project.data_root}")
    print(f"num_shards:  {project.num_shards}")
    print(f"DAGSTER_HOME:{os.environ.get('DAGSTER_HOME', '(unset: ./.dagster_home)')}")
    for s in project.sources:
        print(
            f"source {s.name}: {s.format}, role {s.role}, images {s.images}, annotations {', '.join(s.annotation_files)}"
        )
    for line in gpu_pool_lines(project):
        print(line)
    return 0


def gpu_pool_lines(project) -> list[str]:
    """The node's devices and the `gpu` pool limit, with a warning when they differ.

    One number should size both: the pool limit is how many GPU steps Dagster starts at once,
    the devices are how many of them can hold a device (the rest wait for a lease, idle). PBI
    does not set the limit itself (on Kubernetes it counts the GPUs of every node, not this
    one's): `pbi info` shows both, and says how to make them agree."""
    import dagster as dg

    from pbi_assets.assets.gpu import GPU_POOL
    from pbi_ml.devices import DEVICES_ENV, default_lease_dir, node_devices

    ensure_dagster_home()
    devices = node_devices(project.devices)
    where = f"${DEVICES_ENV}" if os.environ.get(DEVICES_ENV) else "pbi.yaml devices:"
    with dg.DagsterInstance.get() as instance:
        info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    limit = info.limit
    origin = (
        "default_limit in dagster.yaml" if info.using_default_limit else "set with `dagster instance concurrency set`"
    )
    lines = [
        f"devices:     {', '.join(devices)} ({len(devices)} lease slot(s), from {where}; leases in {default_lease_dir()})",
        f"gpu pool:    {'unlimited' if limit is None else limit} step(s) at once ({origin})",
    ]
    if limit is not None and limit != len(devices):
        lines.append(
            f"warning: the gpu pool allows {limit} step(s) at once but this node has {len(devices)} device(s): "
            + (
                "GPUs stay idle"
                if limit < len(devices)
                else "the extra steps wait for a device lease, holding pool slots"
            )
            + f". Make them agree: `dagster instance concurrency set {GPU_POOL} {len(devices)}` "
            "(or pools: default_limit in $DAGSTER_HOME/dagster.yaml)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pbi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    debug_help = "show the full traceback of an error (and Dagster's log of a failed step)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    # accepted after the command too (`pbi run --debug ...`); SUPPRESS keeps a global --debug
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="materialize the whole graph for a source through Dagster")
    run.add_argument("--source", required=True)
    run.add_argument("--shard", action="append", help="only these shards (repeatable), e.g. --shard 000")
    run.add_argument("--run-config", help="YAML run config ({ops: {removals: {config: {...}}}})")
    run.add_argument("--verbose", action="store_true", help="show every Dagster event on the console")
    run.set_defaults(func=cmd_run)
    backfill = sub.add_parser(
        "backfill",
        parents=[common],
        help="launch a Dagster backfill of every partition of a source (the daemon runs them concurrently)",
    )
    backfill.add_argument("--source", required=True)
    backfill.add_argument(
        "--assets",
        help="a Dagster asset selection, as in the UI's search: 'key:pairs+' (pairs and everything downstream), "
        "'group:removal', 'key:catalog'; default: every asset",
    )
    backfill.add_argument(
        "--wait",
        action="store_true",
        help="follow it to the end (for a local instance starting a daemon if none runs); exit 1 on a failure",
    )
    backfill.set_defaults(func=cmd_backfill)
    check = sub.add_parser(
        "check", parents=[common], help="validate pbi.yaml and the sources' files (seconds) before a long run"
    )
    check.add_argument("--source", help="only this source (default: every declared source)")
    check.add_argument("--sample", type=int, default=20, help="images per source to open and size-check (default 20)")
    check.add_argument("--seed", type=int, default=0, help="seed of the image sample")
    check.set_defaults(func=cmd_check)
    sql = sub.add_parser("sql", parents=[common], help="read-only SQL on the catalog")
    sql.add_argument("query")
    sql.add_argument("--max-rows", type=int, default=50)
    sql.set_defaults(func=cmd_sql)
    calibrate = sub.add_parser(
        "calibrate", parents=[common], help="calibrate removal-filter thresholds on hand-labelled removals"
    )
    calibrate_sub = calibrate.add_subparsers(dest="step", required=True)
    sample = calibrate_sub.add_parser(
        "sample", parents=[common], help="write labels.csv + sheet.html for a sample of removals"
    )
    sample.add_argument("--out", required=True)
    sample.add_argument("--n", type=int, default=500)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=cmd_calibrate_sample)
    fit = calibrate_sub.add_parser("fit", parents=[common], help="success rate vs threshold from a labelled labels.csv")
    fit.add_argument("labels")
    fit.add_argument("--column", required=True)
    fit.add_argument("--tolerance", type=float, default=0.02)
    fit.set_defaults(func=cmd_calibrate_fit)
    info = sub.add_parser("info", parents=[common], help="show the project configuration")
    info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - the last word: one or two lines, or the traceback with --debug
        if args.debug:
            traceback.print_exc()
            return 2 if _is_user_error(exc) else 1
        for line in error_lines(exc, args.command):
            print(line, file=sys.stderr)
        return 2 if _is_user_error(exc) else 1


def _is_user_error(exc: BaseException) -> bool:
    """An error in what the user gave: the config, an annotation or input file, the SQL, an argument."""
    from pbi_ml.errors import AnnotationFileError, ConfigError

    kinds: tuple[type[BaseException], ...] = (UserError, ConfigError, AnnotationFileError, FileNotFoundError)
    if "dagster" in sys.modules:  # a --run-config that Dagster's config schema rejects
        import dagster as dg

        kinds += (dg.DagsterInvalidConfigError,)
    return isinstance(exc, kinds)


def error_lines(exc: BaseException, command: str | None = None) -> list[str]:
    """`exc` in at most two lines: `pbi <command>: <what>: <first line>`, then the rest in one line."""
    from pbi_ml.config import default_config_path
    from pbi_ml.errors import AnnotationFileError, ConfigError

    message = str(exc)
    if isinstance(exc, ConfigError):
        config = default_config_path()
        if str(config) not in message and str(config.resolve()) not in message:
            message = f"{config}: {message}"  # name the file the error is in
        kind = "config error"
    elif isinstance(exc, AnnotationFileError):
        kind = "annotation file error"
    elif isinstance(exc, UserError | FileNotFoundError):
        kind = ""
    elif _is_user_error(exc):
        kind = "invalid run config"
    else:
        kind = f"unexpected error ({exc.__class__.__name__})"
    lines = [line.strip() for line in message.splitlines() if line.strip().strip("^").strip()]
    head = f"pbi {command}: " if command else "pbi: "
    first = head + (f"{kind}: " if kind else "") + (lines[0] if lines else exc.__class__.__name__)
    rest = " ".join(lines[1:])
    if not _is_user_error(exc):
        rest = (rest[:200] + " " if rest else "") + "(rerun with `pbi --debug ...` for the traceback)"
    elif len(rest) > 300:
        rest = rest[:297] + "..."
    return [first, f"  {rest}"] if rest else [first]


if __name__ == "__main__":
    sys.exit(main())

"""`pbi`: run the asset graph for a source through Dagster, and query the catalog.

    pbi run --source demo            materialize every asset for every shard of `demo`
    pbi sql "SELECT ... FROM pairs"  read-only SQL on the DuckDB catalog
    pbi info                         data root, sources, shards, DAGSTER_HOME

Runs go through the Dagster instance in $DAGSTER_HOME (default ./.dagster_home, created from the
packaged dagster.yaml template), so they show up in the UI (`dagster dev -w workspace.yaml`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from pbi_assets.run_health import PoolWaitReporter, cleanup_dead_runs, process_tags


def ensure_dagster_home() -> Path:
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if not target.exists():
        shutil.copyfile(Path(__file__).with_name("dagster.yaml"), target)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def _load_run_config(path: str | None) -> dict:
    if not path:
        return {}
    import yaml

    return yaml.safe_load(Path(path).read_text()) or {}


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
    Returns {"runs": [...], "failed": [...]}."""
    import dagster as dg

    from pbi_assets.partitions import PROJECT

    if source not in PROJECT.source_names:
        raise SystemExit(f"unknown source {source!r}; declared: {', '.join(PROJECT.source_names)}")
    instance = dg.DagsterInstance.get()
    reap_dead_runs(instance, log=log)
    with PoolWaitReporter(instance, log=log):
        return _materialize_all(instance, source, run_config or {}, shards or PROJECT.shard_keys, log, log_level)


def reap_dead_runs(instance, log=print) -> list:
    """Fail the runs whose process died and free the pool slots they hold, one line each (see
    `pbi_assets.run_health`): call before launching runs (`pbi run`, a backfill)."""
    cleaned = cleanup_dead_runs(instance)
    for item in cleaned:
        log(f"  {item.line()}")
    return cleaned


def _materialize_all(instance, source: str, run_config: dict, shards: list[str], log, log_level: str) -> dict:
    import dagster as dg

    from pbi_assets.definitions import PARTITIONED_ASSETS, UNPARTITIONED_ASSETS, defs

    all_assets = list(defs.assets) + list(defs.asset_checks or [])
    resources = dict(defs.resources)
    summary = {"runs": [], "failed": []}
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
        status = "ok" if result.success else "FAILED"
        log(f"  {source}|{shard}: {status} in {time.monotonic() - started:.1f}s (run {result.run_id[:8]})")
        if not result.success:
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
    log(
        f"  {', '.join(a.key.to_user_string() for a in UNPARTITIONED_ASSETS)}: {'ok' if result.success else 'FAILED'} in {time.monotonic() - started:.1f}s"
    )
    if not result.success:
        summary["failed"].append("unpartitioned")
    return summary


def _ops_subset(run_config: dict, assets) -> dict:
    ops = run_config.get("ops") or {}
    names = {a.key.to_python_identifier() for a in assets}
    subset = {k: v for k, v in ops.items() if k in names}
    return {"ops": subset} if subset else {}


def cmd_run(args) -> int:
    home = ensure_dagster_home()
    from pbi_assets.partitions import PROJECT

    print(f"PBI: running source {args.source!r} ({PROJECT.num_shards} shards), data root {PROJECT.data_root}")
    print(f"     Dagster runs recorded in {home}")
    summary = run_source(
        args.source,
        _load_run_config(args.run_config),
        args.shard or None,
        log_level="DEBUG" if args.verbose else "WARNING",
    )
    print()
    print_summary(args.source)
    return 1 if summary["failed"] else 0


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
    import pandas as pd

    from pbi_assets.partitions import PROJECT
    from pbi_ml.catalog import query
    from pbi_ml.storage import Storage

    frame = query(Storage(PROJECT.data_root), args.query)
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
    print("open sheet.html, fill the label column of labels.csv (1 = removed cleanly, 0 = not), then:")
    print(f"  pbi calibrate fit {out / 'labels.csv'} --column clip_removal_sim")
    return 0


def cmd_calibrate_fit(args) -> int:
    import pandas as pd

    from pbi_ml.calibration import THRESHOLD_FIELDS, plateau_threshold, threshold_curve

    curve = threshold_curve(pd.read_csv(args.labels), args.column)
    step = max(1, len(curve) // 25)
    print(curve.iloc[::step].to_string(index=False))
    threshold = plateau_threshold(curve, tolerance=args.tolerance)
    print(f"\nplateau threshold for {args.column}: {threshold:.4g}")
    print(f"set it in pbi.yaml:  stages: {{removal_scores: {{{THRESHOLD_FIELDS[args.column]}: {threshold:.4g}}}}}")
    return 0


def cmd_info(args) -> int:
    from pbi_assets.partitions import PROJECT

    print(f"data_root:   {PROJECT.data_root}")
    print(f"num_shards:  {PROJECT.num_shards}")
    print(f"DAGSTER_HOME:{os.environ.get('DAGSTER_HOME', '(unset: ./.dagster_home)')}")
    for s in PROJECT.sources:
        print(
            f"source {s.name}: {s.format}, role {s.role}, images {s.images}, annotations {', '.join(s.annotation_files)}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pbi", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="materialize the whole graph for a source through Dagster")
    run.add_argument("--source", required=True)
    run.add_argument("--shard", action="append", help="only these shards (repeatable), e.g. --shard 000")
    run.add_argument("--run-config", help="YAML run config ({ops: {removals: {config: {...}}}})")
    run.add_argument("--verbose", action="store_true", help="show every Dagster event on the console")
    run.set_defaults(func=cmd_run)
    sql = sub.add_parser("sql", help="read-only SQL on the catalog")
    sql.add_argument("query")
    sql.add_argument("--max-rows", type=int, default=50)
    sql.set_defaults(func=cmd_sql)
    calibrate = sub.add_parser("calibrate", help="calibrate removal-filter thresholds on hand-labelled removals")
    calibrate_sub = calibrate.add_subparsers(dest="step", required=True)
    sample = calibrate_sub.add_parser("sample", help="write labels.csv + sheet.html for a sample of removals")
    sample.add_argument("--out", required=True)
    sample.add_argument("--n", type=int, default=500)
    sample.add_argument("--seed", type=int, default=0)
    sample.set_defaults(func=cmd_calibrate_sample)
    fit = calibrate_sub.add_parser("fit", help="success rate vs threshold from a labelled labels.csv")
    fit.add_argument("labels")
    fit.add_argument("--column", required=True)
    fit.add_argument("--tolerance", type=float, default=0.02)
    fit.set_defaults(func=cmd_calibrate_fit)
    info = sub.add_parser("info", help="show the project configuration")
    info.set_defaults(func=cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

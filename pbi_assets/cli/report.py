"""`pbi sql`, `pbi info`, `pbi check`, `pbi calibrate` and the summary printed after a run."""

from __future__ import annotations

import os

from pbi_assets.cli.errors import UserError, require_source
from pbi_assets.cli.instance import ensure_dagster_home, open_instance


def print_summary(source: str) -> None:
    from pbi_assets.partitions import PROJECT
    from pbi_ml.catalog import query, source_summary
    from pbi_ml.storage import Storage

    storage = Storage(PROJECT.data_root)
    try:
        frame = source_summary(storage, source)
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
        require_source(project.source_names, args.source)
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

    from pbi_assets.assets.gpu import GPU_POOL
    from pbi_ml.devices import DEVICES_ENV, default_lease_dir, node_devices

    ensure_dagster_home()
    devices = node_devices(project.devices)
    where = f"${DEVICES_ENV}" if os.environ.get(DEVICES_ENV) else "pbi.yaml devices:"
    with open_instance() as instance:
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

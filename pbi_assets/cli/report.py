"""`pbi sql`, `pbi info`, `pbi check`, `pbi calibrate` and the summary printed after a run."""

from __future__ import annotations

import os

from pbi_assets.cli.errors import UserError, require_source
from pbi_assets.cli.instance import ensure_dagster_home, open_instance


def print_summary(source: str) -> None:
    from pbi_assets.partitions import PROJECT
    from pbi_ml.catalog import run_summary
    from pbi_ml.storage import Storage

    print(run_summary(Storage(PROJECT.data_root), source))


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
    from pbi_ml.calibration import fit_report

    print("\n".join(fit_report(args.labels, args.column, args.tolerance)))
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


def cmd_verify(args) -> int:
    """Re-hash the source's finished items' files; invalidate (and list) those with a bad file; exit 1 if any."""
    from pbi_ml.config import project_config
    from pbi_ml.stages.item_stage import verify_report
    from pbi_ml.storage import Storage

    project = project_config()
    require_source(project.source_names, args.source)
    try:
        lines, intact = verify_report(Storage(project.data_root), args.source, args.stage)
    except ValueError as exc:
        raise UserError(f"--stage {exc}") from None
    print("\n".join(lines))
    return 0 if intact else 1


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
    """The node's devices and the `gpu` pool limit, warning when they differ (operations.md#pools-and-devices)."""

    from pbi_assets.assets.gpu import GPU_POOL
    from pbi_ml.devices import gpu_pool_report

    ensure_dagster_home()
    with open_instance() as instance:
        info = instance.event_log_storage.get_concurrency_info(GPU_POOL)
    return gpu_pool_report(project.devices, GPU_POOL, info.limit, info.using_default_limit)

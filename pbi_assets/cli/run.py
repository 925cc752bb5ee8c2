"""`pbi run`: materialize every asset of a source in process, shard by shard, then the unpartitioned
assets; a failed run in two lines (its step or Dagster's reason, and where its logs are)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pbi_assets.cli.errors import UserError, require_source
from pbi_assets.cli.instance import UI_URL, ensure_dagster_home, open_instance, prepare_instance
from pbi_assets.cli.report import print_summary
from pbi_assets.failures import run_failure
from pbi_assets.run_health import PoolWaitReporter, process_tags


def _load_run_config(path: str | None) -> dict:
    from pbi_ml.config.project import read_yaml_mapping
    from pbi_ml.errors import ConfigError

    try:
        return read_yaml_mapping(Path(path), " ({ops: {<stage>: {config: ...}}})") if path else {}
    except ConfigError as exc:
        raise UserError(f"--run-config {exc}") from None


def _failure_lines(instance, run_id: str, what: str, seconds: float) -> list[str]:
    """A failed run in two lines: its partition, its step (or Dagster's reason) and why; its logs."""
    failure = run_failure(instance, run_id)
    first = f"  {what}: FAILED in {seconds:.1f}s {failure.line()}"
    where = f"Runs → {run_id[:8]}" + (f" → the {failure.step} step's logs" if failure.step else "")
    ui = f"DAGSTER_HOME={os.environ.get('DAGSTER_HOME', '.dagster_home')} dagster dev -w workspace.yaml"
    return [first, f"    logs: {UI_URL}/runs/{run_id} (start the UI: `{ui}`; then {where})"]


def _materialize_all(instance, source: str, run_config: dict, shards: list[str], log_level: str) -> dict:
    """Each shard of `source`, then the unpartitioned assets: {"failed": [...], "skipped": {asset: why}}."""
    import dagster as dg

    from pbi_assets.definitions import PARTITIONED_ASSETS, UNPARTITIONED_ASSETS, defs

    everything = [*(defs.assets or []), *(defs.asset_checks or [])]
    all_assets = [a for a in everything if isinstance(a, dg.AssetsDefinition | dg.AssetSpec | dg.SourceAsset)]
    summary: dict = {"failed": [], "skipped": {}}

    def materialize(what: str, assets, shard: str | None = None):
        started = time.monotonic()
        result = dg.materialize(
            all_assets,
            selection=assets,
            partition_key=dg.MultiPartitionKey({"source": source, "shard": shard}) if shard else None,
            instance=instance,
            resources=dict(defs.resources or {}),
            run_config=_run_config_for(run_config, assets, log_level),
            raise_on_error=False,
            tags={"pbi/source": source, **({"pbi/shard": shard} if shard else {}), **process_tags()},
        )
        seconds = time.monotonic() - started
        if result.success:
            print(f"  {what}: ok in {seconds:.1f}s (run {result.run_id[:8]})")
        else:
            for line in _failure_lines(instance, result.run_id, what, seconds):
                print(line)
            summary["failed"].append(what if shard else "unpartitioned")
        return result

    for shard in shards:
        materialize(f"{source}|{shard}", PARTITIONED_ASSETS, shard)
    if summary["failed"]:
        print("  some partitions failed; the unpartitioned assets still run on what exists")
    result = materialize(", ".join(a.key.to_user_string() for a in UNPARTITIONED_ASSETS), UNPARTITIONED_ASSETS)
    for event in result.get_asset_materialization_events():  # what did nothing, and why
        materialization = event.materialization
        skipped = materialization.metadata.get("skipped")
        if skipped is not None:
            summary["skipped"][materialization.asset_key.to_user_string()] = str(getattr(skipped, "value", skipped))
    for asset, why in summary["skipped"].items():
        print(f"  {asset}: skipped: {why}")
    return summary


def _run_config_for(run_config: dict, assets, log_level: str) -> dict:
    """The --run-config's ops of these assets; Dagster's console logger at `log_level`."""
    names = {a.key.to_python_identifier() for a in assets}
    ops = {name: config for name, config in (run_config.get("ops") or {}).items() if name in names}
    return {"loggers": {"console": {"config": {"log_level": log_level}}}, **({"ops": ops} if ops else {})}


def cmd_run(args) -> int:
    run_config = _load_run_config(args.run_config)
    from pbi_assets.partitions import PROJECT  # reads the config: an error names the file and field

    require_source(PROJECT.source_names, args.source)
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

    instance = open_instance()
    prepare_instance(instance)
    try:
        # while a step waits for a pool slot, a line every $PBI_POOL_WAIT_LOG_SECONDS says who holds it
        with PoolWaitReporter(instance):
            summary = _materialize_all(instance, args.source, run_config, args.shard or PROJECT.shard_keys, log_level)
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

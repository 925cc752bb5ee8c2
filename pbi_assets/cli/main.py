"""`pbi`: run the asset graph for a source through Dagster, and query the catalog.

    pbi run --source demo            materialize every asset for every shard of `demo`
    pbi backfill --source demo --wait  the same as a Dagster backfill: the daemon runs shards concurrently
    pbi check [--source NAME]        validate pbi.yaml and the sources' files in seconds, before a run
    pbi verify --source demo         re-hash every finished item's files; a corrupt one's item is redone next run
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
import sys
import traceback

from pbi_assets.cli.backfill import cmd_backfill
from pbi_assets.cli.errors import error_lines, is_user_error
from pbi_assets.cli.report import cmd_calibrate_fit, cmd_calibrate_sample, cmd_check, cmd_info, cmd_sql, cmd_verify
from pbi_assets.cli.run import cmd_run


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

    def command(subparsers, name: str, func, summary: str) -> argparse.ArgumentParser:
        parsed = subparsers.add_parser(name, parents=[common], help=summary)
        parsed.set_defaults(func=func)
        return parsed

    run = command(sub, "run", cmd_run, "materialize the whole graph for a source through Dagster")
    run.add_argument("--source", required=True)
    run.add_argument("--shard", action="append", help="only these shards (repeatable), e.g. --shard 000")
    run.add_argument("--run-config", help="YAML run config ({ops: {removals: {config: {...}}}})")
    run.add_argument("--verbose", action="store_true", help="show every Dagster event on the console")
    backfill_help = "launch a Dagster backfill of every partition of a source (the daemon runs them concurrently)"
    backfill = command(sub, "backfill", cmd_backfill, backfill_help)
    backfill.add_argument("--source", required=True)
    backfill.add_argument(
        "--assets",
        help="a Dagster asset selection, as in the UI's search: 'key:pairs+' (pairs and everything downstream), "
        "'group:removal', 'key:catalog'; default: every asset",
    )
    wait_help = "follow it to the end (for a local instance starting a daemon if none runs); exit 1 on a failure"
    backfill.add_argument("--wait", action="store_true", help=wait_help)
    check = command(sub, "check", cmd_check, "validate pbi.yaml and the sources' files (seconds) before a long run")
    check.add_argument("--source", help="only this source (default: every declared source)")
    check.add_argument("--sample", type=int, default=20, help="images per source to open and size-check (default 20)")
    check.add_argument("--seed", type=int, default=0, help="seed of the image sample")
    verify = command(sub, "verify", cmd_verify, "re-hash every finished item's files; invalidate the corrupt ones")
    verify.add_argument("--source", required=True)
    verify.add_argument("--stage", help="only this stage's table, e.g. removals (default: every item stage)")
    sql = command(sub, "sql", cmd_sql, "read-only SQL on the catalog")
    sql.add_argument("query")
    sql.add_argument("--max-rows", type=int, default=50)
    calibrate = sub.add_parser(
        "calibrate", parents=[common], help="calibrate removal-filter thresholds on hand-labelled removals"
    )
    steps = calibrate.add_subparsers(dest="step", required=True)
    sample = command(steps, "sample", cmd_calibrate_sample, "write labels.csv + sheet.html for a sample of removals")
    sample.add_argument("--out", required=True)
    sample.add_argument("--n", type=int, default=500)
    sample.add_argument("--seed", type=int, default=0)
    fit = command(steps, "fit", cmd_calibrate_fit, "success rate vs threshold from a labelled labels.csv")
    fit.add_argument("labels")
    fit.add_argument("--column", required=True)
    fit.add_argument("--tolerance", type=float, default=0.02)
    command(sub, "info", cmd_info, "show the project configuration")
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as exc:  # noqa: BLE001 - the last word: one or two lines, or the traceback with --debug
        if args.debug:
            traceback.print_exc()
            return 2 if is_user_error(exc) else 1
        for line in error_lines(exc, args.command):
            print(line, file=sys.stderr)
        return 2 if is_user_error(exc) else 1


if __name__ == "__main__":
    sys.exit(main())

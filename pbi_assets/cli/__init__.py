"""The `pbi` command line: main.py (arguments), run.py, backfill.py, report.py (the commands),
instance.py (the Dagster instance), errors.py (how an error is printed)."""

from pbi_assets.cli.main import main

__all__ = ["main"]

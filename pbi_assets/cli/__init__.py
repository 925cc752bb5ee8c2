"""The `pbi` command line (`pbi = pbi_assets.cli:main`): main.py parses the arguments; run.py,
backfill.py and report.py are the commands; instance.py the Dagster instance they use; errors.py
how an error is printed."""

from pbi_assets.cli.main import main

__all__ = ["main"]

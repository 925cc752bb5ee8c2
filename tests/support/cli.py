"""`pbi` in a child process, as a user runs it: the one way the tests start the CLI.

The child is this interpreter running `python -m pbi_assets.cli` in the repository root, with the
environment the test gives (`pbi_env` builds the usual one: this process's environment, so the
session PBI_CONFIG and PYTHONPATH, with a data root and a Dagster home of the test's own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PBI = [sys.executable, "-m", "pbi_assets.cli"]


def pbi_env(data_root: Path, home: Path, **overrides: str) -> dict[str, str]:
    """This process's environment with PBI_DATA_ROOT, DAGSTER_HOME, HF_HUB_OFFLINE=1 and `overrides`."""
    return dict(os.environ, PBI_DATA_ROOT=str(data_root), DAGSTER_HOME=str(home), HF_HUB_OFFLINE="1", **overrides)


def run_pbi(*args: str, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """`pbi *args` to the end; its stdout and stderr captured as text."""
    return subprocess.run([*PBI, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def start_pbi(*args: str, env: dict[str, str], **popen_kwargs) -> subprocess.Popen:
    """`pbi *args` in the background (`popen_kwargs`: where its output goes, its session, ...)."""
    return subprocess.Popen([*PBI, *args], cwd=REPO, env=env, **popen_kwargs)

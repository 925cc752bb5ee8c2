"""The scale simulation benchmark runs end to end at a tiny size (its figures are not asserted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scale_simulation_runs_at_tiny_size(tmp_path):
    sizes = ["--images", "40", "--instances", "200", "--shards", "2", "--items", "50", "--pairs", "400"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "scale_simulation.py"), *sizes, "--partitions", "2"]
        + ["--workdir", str(tmp_path / "sim")],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for figure in (
        "pbi check, cached index current",
        "no-op re-run / stat floor",
        "catalog file",
        "item stage / check",
    ):
        assert figure in done.stdout, figure
    assert not (tmp_path / "sim").exists()

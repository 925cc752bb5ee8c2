"""SIGKILL a real `pbi run` at two points (mid-removals, then mid-descriptions), re-run it, and get
the rows and file bytes of an uninterrupted run in every partitioned stage table."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq

from pbi_ml import tables
from pbi_ml.storage import Ledger
from tests.support.cli import pbi_env, run_pbi, start_pbi


def _pbi_run(data_root: Path, home: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return run_pbi("run", "--source", "demo", env=pbi_env(data_root, home), timeout=timeout)


def _kill_when(data_root: Path, home: Path, folder: Path, timeout: float = 600) -> int:
    """Start `pbi run`, SIGKILL it as soon as `folder` holds a finished-item record; returns how
    many records there were at the kill."""
    child = start_pbi(
        "run",
        "--source",
        "demo",
        env=pbi_env(data_root, home),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and child.poll() is None:
            if _records(folder):
                break
            time.sleep(0.01)
        assert child.poll() is None, "pbi run ended before the kill point"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    return _records(folder)


def _records(folder: Path) -> int:
    """Finished-item records in the stage's ledgers under `folder`."""
    return sum(len(Ledger(path).read()[0]) for path in folder.rglob("ledger.jsonl"))


def _tables(data_root: Path) -> dict[str, list[dict]]:
    out = {}
    for spec in tables.PARTITIONED_TABLES:
        for path in sorted((data_root / "tables" / spec.name).glob("*/*.parquet")):
            rows = pq.read_table(path).to_pylist()
            text = repr(rows).replace(str(data_root.resolve()), "<root>")
            out[str(path.relative_to(data_root))] = text
    return out


def _files(data_root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data_root)): p.read_bytes() for p in sorted((data_root / "files").rglob("*.png"))}


def test_sigkill_at_two_points_then_rerun_equals_an_uninterrupted_run(tmp_path):
    clean = _pbi_run(tmp_path / "clean", tmp_path / "home-clean")
    assert clean.returncode == 0, clean.stdout[-2000:] + clean.stderr[-2000:]

    data, home = tmp_path / "killed", tmp_path / "home-killed"
    first = _kill_when(data, home, data / "items" / tables.REMOVALS.name)
    second = _kill_when(data, home, data / "items" / tables.DESCRIPTIONS.name)
    assert first >= 1 and second >= 1
    rerun = _pbi_run(data, home)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]

    expected, got = _tables(tmp_path / "clean"), _tables(data)
    assert set(got) == set(expected)
    for name in expected:
        assert got[name] == expected[name], name
    assert _files(data) == _files(tmp_path / "clean")

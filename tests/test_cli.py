"""`pbi run` goes through a persistent Dagster instance (runs show in the UI); `pbi sql` reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    config = tmp_path / "pbi.yaml"
    if not config.exists():
        config.write_text("{}\n")  # nothing declared: the demo source only
    env.update(
        PBI_CONFIG=str(config),
        PBI_DATA_ROOT=str(tmp_path / "data"),
        DAGSTER_HOME=str(tmp_path / "home"),
        HF_HUB_OFFLINE="1",
    )
    return env


def _pbi(tmp_path, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pbi_assets.cli", *args],
        cwd=ROOT,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_pbi_run_records_runs_in_the_instance_and_sql_reads_the_catalog(tmp_path, monkeypatch):
    done = _pbi(tmp_path, "run", "--source", "demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo|000: ok" in done.stdout and "pairs" in done.stdout
    assert (tmp_path / "home" / "dagster.yaml").exists(), "DAGSTER_HOME is created from the template"

    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 5  # one run per shard (4 by default), then the unpartitioned assets
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert any(r.tags.get("dagster/partition") for r in runs)

    out = _pbi(tmp_path, "sql", "SELECT count(*) AS n FROM candidates WHERE source = 'demo'")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 0

    bad = _pbi(tmp_path, "run", "--source", "nope")
    assert bad.returncode != 0 and "unknown source 'nope'" in (bad.stdout + bad.stderr)

"""The CLI speaks in one or two lines: every error in the user's input (the config, the SQL, a
source name, a missing file, a malformed annotation file, a failed partition) is printed briefly,
naming the problem and the file or field, with a non-zero exit; `--debug` shows the traceback.

Each case runs `pbi` as a subprocess, like a user would. Only the failed-partition case runs the
graph: on the session's `gen_malformed` source, whose annotation file is not valid JSON, so the
first step (source_index) fails in seconds.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.cli import pbi_env, run_pbi


def _pbi(tmp_path: Path, *args: str, config: Path | str | None = None) -> subprocess.CompletedProcess:
    """Run `pbi` with the session config (or `config`), a fresh data root and Dagster home."""
    env = pbi_env(tmp_path / "data", tmp_path / "home")  # PBI_CONFIG: the session pbi.yaml (tests/conftest.py)
    if config is not None:
        env["PBI_CONFIG"] = str(config)
    return run_pbi(*args, env=env)


def _brief_error(done: subprocess.CompletedProcess) -> str:
    """The error output of a failed command: non-zero exit, one or two lines, no traceback."""
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stderr


def test_a_config_error_names_the_file_and_the_field(tmp_path):
    config = tmp_path / "pbi.yaml"
    config.write_text(
        f"sources:\n  - {{name: mine, format: cocoo, images: {tmp_path}, annotations: {tmp_path / 'a.json'}}}\n"
    )
    err = _brief_error(_pbi(tmp_path, "info", config=config))
    assert str(config) in err and "format 'cocoo'" in err and "config error" in err


def test_a_missing_config_file_fails_in_one_line_naming_it(tmp_path):
    done = _pbi(tmp_path, "info", config="/nonexistent.yaml")
    err = _brief_error(done)
    assert len(err.strip().splitlines()) == 1
    assert "/nonexistent.yaml" in err and "not found" in err


def test_bad_sql_prints_duckdbs_message_briefly(tmp_path):
    from pbi_ml.catalog import build_catalog
    from pbi_ml.storage import Storage

    build_catalog(Storage(tmp_path / "data"))  # the catalog of an empty project: views over empty tables
    err = _brief_error(_pbi(tmp_path, "sql", "SELEC * FROM pairs"))
    assert "Parser Error" in err and "SELEC" in err

    assert "Did you mean" in _brief_error(_pbi(tmp_path, "sql", "SELECT * FROM pairz"))


def test_debug_shows_the_traceback(tmp_path):
    done = _pbi(tmp_path, "--debug", "sql", "SELECT 1")  # no catalog yet
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "no catalog yet" in done.stderr


def test_an_unknown_source_is_named_with_the_declared_ones(tmp_path):
    for command in ("run", "check"):
        err = _brief_error(_pbi(tmp_path, command, "--source", "nope"))
        assert "unknown source 'nope'" in err and "demo" in err, command


def test_a_missing_file_is_named(tmp_path):
    missing = tmp_path / "no-such-run-config.yaml"
    err = _brief_error(_pbi(tmp_path, "run", "--source", "demo", "--run-config", str(missing)))
    assert str(missing) in err and "not found" in err

    err = _brief_error(_pbi(tmp_path, "sql", "SELECT 1"))  # the catalog is not built yet
    assert str(tmp_path / "data" / "catalog.duckdb") in err and "no catalog yet" in err


def test_a_malformed_annotation_file_is_named_with_its_problem(tmp_path):
    done = _pbi(tmp_path, "check", "--source", "gen_malformed")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    fatal = [line for line in done.stdout.splitlines() if "annotation_file_error" in line]
    assert len(fatal) == 1, done.stdout
    assert "gen_malformed/annotations.json" in fatal[0] and "invalid JSON" in fatal[0]


def test_a_failed_partition_names_its_step_the_reason_and_the_run_in_the_ui(tmp_path, monkeypatch):
    done = _pbi(tmp_path, "run", "--source", "gen_malformed", "--shard", "000")
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "Traceback" not in out and "Stack Trace" not in out
    lines = out.splitlines()
    failed = next(i for i, line in enumerate(lines) if "gen_malformed|000: FAILED" in line)
    assert "at step source_index" in lines[failed]
    assert "AnnotationFileError: " in lines[failed] and "gen_malformed/annotations.json: invalid JSON" in lines[failed]
    where = lines[failed + 1]
    assert "http://127.0.0.1:3000/runs/" in where and "dagster dev -w workspace.yaml" in where
    run_id = where.split("/runs/")[1].split()[0]

    assert "the source_index step" in where
    assert "1 run(s) failed: gen_malformed|000" in out

    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dg.DagsterInstance.get() as instance:  # the run the line points at, failed, in the instance
        run = instance.get_run_by_id(run_id)
        assert run is not None and run.status == dg.DagsterRunStatus.FAILURE


def test_in_a_pod_without_the_instance_file_backfill_fails_in_one_line_naming_it(tmp_path):
    """In Kubernetes pbi never makes its own SQLite instance: an empty DAGSTER_HOME is an error."""
    env = pbi_env(tmp_path / "data", tmp_path / "home", KUBERNETES_SERVICE_HOST="10.96.0.1")
    (tmp_path / "home").mkdir()
    done = run_pbi("backfill", "--source", "demo", env=env)
    err = _brief_error(done)
    assert len(err.strip().splitlines()) == 1, err
    assert str(tmp_path / "home" / "dagster.yaml") in err and "instance ConfigMap" in err, err
    assert list((tmp_path / "home").iterdir()) == [], "no instance made"

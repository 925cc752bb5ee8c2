"""The Dagster instance in PostgreSQL (deploy/dagster-postgres.yaml, the `pbi[postgres]` extra).

A real PostgreSQL server (tests/support/postgres_server.py: the one $DAGSTER_PG_* names, as `.ci/run`
sets up, else a throwaway cluster from the machine's PostgreSQL binaries) and a fresh database per
test. The demo graph runs through `pbi run` against it, two processes of two sources at once,
and the database itself is queried: the runs, their event logs, a schedule and the pools' slots
are rows in Postgres, and the gpu pool (limit 1) kept the two processes' GPU steps one at a time.
The tests skip only where no PostgreSQL server can be started, saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.cli import run_pbi, start_pbi
from tests.support.postgres_server import PostgresServer, PostgresUnavailable, fresh_database, postgres_server

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TEMPLATE = ROOT / "deploy" / "dagster-postgres.yaml"
GPU_STEPS = ("class_scores", "removals", "removal_scores", "artifact_audit", "descriptions", "instructions")
GPU_STEPS += ("pair_judgments", "checkpoint", "evaluation")
CLAIM_RACE_S = 0.05
# a short training and evaluation: this is about the instance, not the model
QUICK = {
    "ops": {
        "checkpoint": {
            "config": {"max_steps": 2, "train_batch_size": 2, "gradient_accumulation_steps": 1, "resolution": 32}
        },
        "evaluation": {"config": {"num_inference_steps": 1, "max_samples": 2, "resolution": 32}},
    }
}


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    stack = contextlib.ExitStack()
    try:
        server = stack.enter_context(postgres_server())
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    with stack:
        yield server


@pytest.fixture
def pg_env(tmp_path, pg) -> Iterator[dict[str, str]]:
    """The environment of a process on the Postgres instance: DAGSTER_HOME holding
    deploy/dagster-postgres.yaml, DAGSTER_PG_* naming a fresh database, a pbi.yaml with the demo
    source and a small generated COCO source, two shards each, a shared data root."""
    from tests.support.source_fixtures import make_coco_source

    home = tmp_path / "home"
    home.mkdir()
    shutil.copyfile(TEMPLATE, home / "dagster.yaml")
    small = make_coco_source(tmp_path / "small", name="small", n_images=2)
    entry = {"name": "small", "format": "coco", "images": small.images, "annotations": small.annotation_files[0]}
    (tmp_path / "pbi.yaml").write_text(yaml.safe_dump({"num_shards": 2, "sources": [entry]}))
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(QUICK))
    with fresh_database(pg) as db:
        yield dict(
            os.environ,
            **pg.env(db),
            DAGSTER_HOME=str(home),
            PBI_CONFIG=str(tmp_path / "pbi.yaml"),
            PBI_DATA_ROOT=str(tmp_path / "data"),
            HF_HUB_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )


def _rows(pg: PostgresServer, env: dict, sql: str, *args) -> list[tuple]:
    with contextlib.closing(pg.connect(env["DAGSTER_PG_DB"])) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchall()


def test_the_postgres_template_is_the_sqlite_template_plus_storage():
    postgres = yaml.safe_load(TEMPLATE.read_text())
    sqlite = yaml.safe_load((ROOT / "pbi_assets" / "dagster.yaml").read_text())
    db = postgres.pop("storage")["postgres"]["postgres_db"]
    assert postgres == sqlite, "concurrency, run monitoring, telemetry: the same as the SQLite template"
    assert db.pop("scheme") == "postgresql+psycopg2", "the driver dagster-postgres installs"
    assert {k: v["env"] for k, v in db.items()} == {
        "hostname": "DAGSTER_PG_HOST",
        "port": "DAGSTER_PG_PORT",
        "username": "DAGSTER_PG_USER",
        "password": "DAGSTER_PG_PASSWORD",
        "db_name": "DAGSTER_PG_DB",
    }


def test_the_instance_is_postgres(pg_env, monkeypatch):
    import dagster as dg
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    for key in ("DAGSTER_PG_HOST", "DAGSTER_PG_PORT", "DAGSTER_PG_USER", "DAGSTER_PG_PASSWORD", "DAGSTER_PG_DB"):
        monkeypatch.setenv(key, pg_env[key])
    with dg.DagsterInstance.from_config(pg_env["DAGSTER_HOME"]) as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


def _pbi_run(env: dict, source: str, log: Path) -> subprocess.Popen:
    """`pbi run` of one shard of `source` (a shard each keeps the test short), in the background."""
    quick = Path(env["PBI_CONFIG"]).with_name("quick.yaml")
    return start_pbi(
        *("run", "--source", source, "--shard", "000", "--run-config", str(quick)),
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_pbi_runs_of_two_sources_at_once_share_the_postgres_instance(pg, pg_env, tmp_path):
    started = time.monotonic()
    logs = {source: tmp_path / f"{source}.log" for source in ("demo", "small")}
    procs = {source: _pbi_run(pg_env, source, log) for source, log in logs.items()}
    for source, proc in procs.items():
        proc.wait(timeout=900)
        out = logs[source].read_text()
        assert proc.returncode == 0, f"{source}:\n{out}"
        assert f"{source}|000: ok" in out and "catalog, exports, checkpoint, evaluation: ok" in out, out
    print(f"two pbi runs at once: {time.monotonic() - started:.0f}s")

    # the runs are rows in Postgres: one per shard and one for the unpartitioned assets, per process
    runs = _rows(pg, pg_env, "SELECT run_id, status, run_body FROM runs")
    assert len(runs) == 4 and {status for _, status, _ in runs} == {"SUCCESS"}
    sources = sorted(body.split('"pbi/source": "')[1].split('"')[0] for _, _, body in runs)
    assert sources == ["demo", "demo", "small", "small"]
    # ... and so are their event logs
    per_run = dict(_rows(pg, pg_env, "SELECT run_id, count(*) FROM event_logs GROUP BY run_id"))
    assert set(per_run) == {run_id for run_id, _, _ in runs} and min(per_run.values()) > 10

    # the pools' slots: claimed in Postgres by both processes' steps
    pools = {key for (key,) in _rows(pg, pg_env, "SELECT DISTINCT concurrency_key FROM concurrency_slots")}
    assert {"gpu", "duckdb_catalog"} <= pools
    assert _rows(pg, pg_env, "SELECT count(*) FROM concurrency_slots WHERE run_id IS NOT NULL") == [(0,)], (
        "every slot was given back"
    )
    # gpu pool limit 1 across the two processes: their GPU steps ran one after the other
    spans: dict[tuple[str, str], list[float]] = {}
    for run_id, step, kind, stamp in _rows(
        pg,
        pg_env,
        "SELECT run_id, step_key, dagster_event_type, extract(epoch from timestamp) FROM event_logs "
        "WHERE dagster_event_type IN ('STEP_START', 'STEP_SUCCESS') AND step_key = ANY(%s)",
        list(GPU_STEPS),
    ):
        spans.setdefault((run_id, step), [0.0, 0.0])[kind == "STEP_SUCCESS"] = float(stamp)
    intervals = sorted(spans.values())
    assert len(intervals) == 2 * len(GPU_STEPS), spans
    assert len({run_id for run_id, _ in spans}) == 4, "GPU steps of every run, both processes"
    # Dagster's slot claim on Postgres is a SELECT ... FOR UPDATE SKIP LOCKED and an UPDATE on an
    # autocommit connection (dagster 1.13, SqlEventLogStorage._claim_concurrency_slot): two claims
    # within the same few milliseconds can both take the one free slot. The two processes reach their
    # first GPU step together, so that race is allowed once, for two steps that started within
    # CLAIM_RACE_S of each other (docs/operations.md#known-limits); any other overlap fails.
    races = 0
    for (first_start, end), (start, _) in zip(intervals, intervals[1:], strict=False):
        if start < end and start - first_start < CLAIM_RACE_S:
            races += 1
            continue
        assert start >= end, f"two GPU steps overlapped: {sorted(spans.items(), key=lambda kv: kv[1])}"
    assert races <= 1, f"{races} simultaneous claims of the one gpu slot: {intervals}"

    # a schedule started against the instance is a row in Postgres too
    done = subprocess.run(
        [str(BIN / "dagster"), "schedule", "start", "weekly_retraining", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=pg_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    bodies = [body for (body,) in _rows(pg, pg_env, "SELECT instigator_body FROM instigators WHERE status = 'RUNNING'")]
    assert any('"weekly_retraining"' in body for body in bodies), bodies


def test_a_backfill_through_the_daemon_on_the_postgres_instance(pg, pg_env):
    """`pbi backfill --wait`: the backfill is a row in Postgres; the daemon it starts (on the same
    instance) turns it into one run per shard, and they all succeed."""
    started = time.monotonic()
    # in_process: each run's steps in its run worker (the executor switch; multiprocess would start
    # a process per step, each importing the code location: slow on a small CI machine)
    env = dict(pg_env, PBI_EXECUTOR="in_process")
    done = run_pbi("backfill", "--source", "small", "--assets", "key:source_index or key:candidates", "--wait", env=env)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    print(f"backfill of 2 shards through the daemon: {time.monotonic() - started:.0f}s\n{out}")
    [(backfill_id, status)] = _rows(pg, pg_env, "SELECT key, status FROM bulk_actions")
    assert status == "COMPLETED_SUCCESS" and backfill_id in out
    runs = _rows(
        pg,
        pg_env,
        "SELECT r.status, p.value FROM runs r JOIN run_tags b ON b.run_id = r.run_id AND b.key = 'dagster/backfill' "
        "JOIN run_tags p ON p.run_id = r.run_id AND p.key = 'dagster/partition' WHERE b.value = %s",
        backfill_id,
    )
    assert sorted(runs) == [("SUCCESS", "000|small"), ("SUCCESS", "001|small")], runs
    assert "started `dagster-daemon run` for this backfill" in out, out
    in_process = _rows(
        pg,
        pg_env,
        "SELECT count(DISTINCT e.run_id) FROM event_logs e JOIN run_tags b ON b.run_id = e.run_id "
        "AND b.key = 'dagster/backfill' WHERE b.value = %s AND e.event LIKE '%%Executing steps in process%%'",
        backfill_id,
    )
    assert in_process == [(2,)], "the daemon's runs took the executor from $PBI_EXECUTOR"


_INITIALIZE_AT = """
import sys, time
import dagster as dg
from pbi_assets.pools import initialize_pools
instance = dg.DagsterInstance.get()
start = float(sys.argv[1])
time.sleep(max(0.0, start - time.time()))
print(sorted(initialize_pools(instance, ["gpu", "duckdb_catalog"])))
"""


def test_processes_starting_at_once_on_a_fresh_instance_initialize_each_pool_once(pg, pg_env):
    """The race that made one of two `pbi run`s die before any step: Dagster gives a pool its
    limit on the first slot claim, and on Postgres the loser of two processes doing it at once
    fails (its INSERT aborts the transaction its fallback UPDATE then runs in). Four processes
    initialize the pools at the same instant: all succeed, each pool is initialized once, and
    each has exactly its limit (1) of slots."""
    # the storage's tables created once, as the first `pbi` process on a new database does
    subprocess.run([sys.executable, "-c", "import dagster as dg; dg.DagsterInstance.get()"], env=pg_env, check=True)
    start = time.time() + 8  # every process has imported dagster and connected by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _INITIALIZE_AT, str(start)], env=pg_env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(4)
    ]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outs
    won = [pool for out in outs for pool in eval(out.strip().splitlines()[-1])]
    assert sorted(won) == ["duckdb_catalog", "gpu"], f"each pool initialized by exactly one process: {outs}"
    slots = dict(_rows(pg, pg_env, "SELECT concurrency_key, count(*) FROM concurrency_slots GROUP BY 1"))
    assert slots == {"gpu": 1, "duckdb_catalog": 1}


_OPEN_AFTER_A_COLLISION = """
import dagster as dg
from pbi_assets.cli.instance import open_instance, postgres_error_codes
try:
    dg.DagsterInstance.get()
    print("no collision", flush=True)
except Exception as exc:
    print("collided", *sorted(postgres_error_codes(exc)), flush=True)
instance = open_instance()
print("opened; runs:", instance.get_runs_count(), flush=True)
"""


def test_a_process_that_collides_creating_the_tables_opens_the_instance_on_retry(pg, pg_env):
    """What made one of two `pbi run`s on a new database die before any step: both create the
    storage's tables, and the loser's CREATE TABLE fails with DuplicateObject (42710: the other
    process committed the table's row type between Postgres's two name checks), which Dagster
    does not retry. The same error, made deterministic: a type named like a Dagster table already
    exists (an enum: a type without a relation, so the table's name check passes and its type's
    fails), so opening the instance fails; `open_instance` keeps retrying, and succeeds once the
    name is free (as it is, for a real collision, once the winner has committed its tables)."""
    with contextlib.closing(pg.connect(pg_env["DAGSTER_PG_DB"])) as conn, conn.cursor() as cur:
        conn.autocommit = True
        cur.execute("CREATE TYPE secondary_indexes AS ENUM ('x')")
        child = subprocess.Popen(
            [sys.executable, "-c", _OPEN_AFTER_A_COLLISION], env=pg_env, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first.split() == ["collided", "42710"], first
        time.sleep(1.0)  # open_instance is retrying against the same error meanwhile
        cur.execute("DROP TYPE secondary_indexes")
    out = first + child.communicate(timeout=120)[0]
    assert child.returncode == 0 and "opened; runs: 0" in out, out
    tables = {name for (name,) in _rows(pg, pg_env, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"runs", "event_logs", "secondary_indexes", "alembic_version"} <= tables


_OPEN_AT = """
import sys, time
start = float(sys.argv[1])
from pbi_assets.cli.instance import open_instance
time.sleep(max(0.0, start - time.time()))
print("opened; runs:", open_instance().get_runs_count())
"""


def test_four_processes_open_a_new_instance_at_the_same_instant(pg, pg_env):
    """Four `pbi` processes on a new database create its tables at the same instant: all open it."""
    start = time.time() + 8  # every process has imported dagster by then
    procs = [
        subprocess.Popen([sys.executable, "-c", _OPEN_AT, str(start)], env=pg_env, stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0, 0, 0], outs
    assert all("opened; runs: 0" in out for out in outs), outs

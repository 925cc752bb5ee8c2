"""A killed run never blocks the next one.

`kill -9` of `pbi run` while one of its steps holds the `gpu` pool's only slot leaves the run STARTED
and the slot claimed. `pbi run` fails such runs of its own and frees their slots before it starts
(pbi_assets/run_health.py); for daemon-launched runs the code server and Dagster's run monitoring
(the dagster.yaml template) do it, and pbi leaves them alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.support.cli import pbi_env, run_pbi, start_pbi

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "pbi_assets" / "dagster.yaml"
BIN = Path(sys.executable).parent


def _home(tmp_path: Path, overrides: dict | None = None) -> Path:
    home = tmp_path / "home"
    home.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(TEMPLATE.read_text())
    for key, value in (overrides or {}).items():
        config.setdefault(key, {}).update(value)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return home


@pytest.fixture
def instance(tmp_path):
    import dagster as dg

    with dg.DagsterInstance.from_config(str(_home(tmp_path))) as inst:
        inst.event_log_storage.set_concurrency_slots("gpu", 1)
        yield inst


def _dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "30"])
    proc.kill()
    proc.wait()
    return proc.pid


def _add_run(instance, tags: dict, status=None, job_name: str = "__ASSET_JOB"):
    import dagster as dg
    from dagster._core.storage.dagster_run import DagsterRun

    run = DagsterRun(
        job_name=job_name,
        run_id=str(uuid.uuid4()),
        status=status or dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": "000|demo", **tags},
    )
    return instance.add_run(run)


def _claim(instance, run, step: str) -> bool:
    return instance.event_log_storage.claim_concurrency_slot("gpu", run.run_id, step).is_claimed


def _holders(instance) -> list[tuple[str, str]]:
    return [(s.run_id, s.step_key) for s in instance.event_log_storage.get_concurrency_info("gpu").claimed_slots]


def _status(instance, run):
    return instance.get_run_by_id(run.run_id).status


# ---------------------------------------------------------------------------------------------
# the cleanup function


def test_cleanup_fails_a_run_whose_process_is_gone_and_frees_its_slot(instance):
    import dagster as dg

    from pbi_assets.run_health import HOST_TAG, PID_STARTED_TAG, PID_TAG, cleanup_dead_runs, this_host

    dead = _add_run(instance, {HOST_TAG: this_host(), PID_TAG: str(_dead_pid()), PID_STARTED_TAG: "1.00"})
    assert _claim(instance, dead, "evaluation")
    waiting = _add_run(instance, {HOST_TAG: "elsewhere", PID_TAG: "1"})
    assert not _claim(instance, waiting, "removals"), "the only slot is held"

    (cleaned,) = cleanup_dead_runs(instance)

    assert cleaned.startswith(f"cleaned up run {dead.run_id[:8]} (assets 000|demo; holding gpu:evaluation): ")
    assert "is gone" in cleaned
    assert _status(instance, dead) == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(dead.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert failure and "Marked failed by pbi" in failure[0].dagster_event.message
    assert _holders(instance) == []
    assert _claim(instance, waiting, "removals"), "the next run gets the slot"
    assert cleanup_dead_runs(instance) == [], "nothing left to clean; the other host's run is not touched"


def test_cleanup_leaves_live_other_host_and_daemon_launched_runs_alone(instance):
    import dagster as dg
    from dagster._core.events import EngineEventData

    from pbi_assets.run_health import HOST_TAG, PID_TAG, cleanup_dead_runs, process_tags

    live = _add_run(instance, process_tags())  # this very process: alive
    assert _claim(instance, live, "evaluation")
    foreign = _add_run(instance, {HOST_TAG: "some-other-host", PID_TAG: str(_dead_pid())})
    # a run the daemon launched on this machine whose worker is gone: Dagster's to fail, not pbi's
    launched = _add_run(instance, {"dagster/grpc_info": json.dumps({"host": "localhost", "port": 4000})})
    instance.report_engine_event("Started process for run (pid: x).", launched, EngineEventData.in_process(_dead_pid()))

    assert cleanup_dead_runs(instance) == []
    for run in (live, foreign, launched):
        assert _status(instance, run) == dg.DagsterRunStatus.STARTED
    assert _holders(instance) == [(live.run_id, "evaluation")]


def test_cleanup_sees_a_recycled_pid(instance):
    from pbi_assets.run_health import HOST_TAG, PID_STARTED_TAG, PID_TAG, cleanup_dead_runs, this_host

    # our pid, but the process that ran it started at another time: the pid was reused
    recycled = _add_run(instance, {HOST_TAG: this_host(), PID_TAG: str(os.getpid()), PID_STARTED_TAG: "1000.00"})
    (cleaned,) = cleanup_dead_runs(instance)
    assert cleaned.startswith(f"cleaned up run {recycled.run_id[:8]} (assets 000|demo): ")
    assert "another process" in cleaned


def test_pool_wait_reporter_says_which_pool_and_which_run_holds_it(instance):
    from pbi_assets.run_health import HOST_TAG, PID_TAG, PoolWaitReporter, process_tags

    holder = _add_run(instance, {HOST_TAG: "other-host", PID_TAG: "1"})
    assert _claim(instance, holder, "evaluation")
    mine = _add_run(instance, process_tags())
    assert not _claim(instance, mine, "removals")

    lines: list[str] = []
    reporter = PoolWaitReporter(instance, interval=0.3, first_after=0, log=lines.append)
    assert reporter.check() == [
        f"  waiting for pool 'gpu' (limit 1): held by run {holder.run_id[:8]} step evaluation; waiting: removals"
    ]
    assert reporter.check() == [], "not again before the interval"
    time.sleep(0.35)
    assert len(reporter.check()) == 1, "again after the interval"

    threaded: list[str] = []
    with PoolWaitReporter(instance, interval=0.2, first_after=0.1, log=threaded.append):
        time.sleep(1.5)
    assert len(threaded) >= 3 and all("held by run" in line for line in threaded)

    instance.event_log_storage.free_concurrency_slots_for_run(holder.run_id)
    assert _claim(instance, mine, "removals")
    assert PoolWaitReporter(instance, first_after=0, log=lines.append).check() == [], "no step of ours waits"


# ---------------------------------------------------------------------------------------------
# the bug as the user saw it: kill -9 `pbi run` during a gpu step, then `pbi run` again


def _pbi_env(tmp_path: Path) -> dict:
    # the session pbi.yaml (PBI_CONFIG) from conftest
    return pbi_env(tmp_path / "data", tmp_path / "home", PBI_POOL_WAIT_LOG_SECONDS="2", PYTHONUNBUFFERED="1")


def _wait_for(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - e.g. SQLite busy while another process writes
            error, value = exc, None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {error!r})")


def _gpu_holder(instance):
    storage = instance.event_log_storage
    if "gpu" not in storage.get_concurrency_keys():
        return None
    slots = storage.get_concurrency_info("gpu").claimed_slots
    return slots[0] if slots else None


def test_pbi_run_after_a_kill_minus_9_during_a_gpu_step_completes(tmp_path):
    import dagster as dg

    env = _pbi_env(tmp_path)
    home = _home(tmp_path)
    # create the SQLite storages before any other process opens them: two processes creating
    # them at once can stamp the alembic version twice ("more than one head present")
    dg.DagsterInstance.from_config(str(home)).dispose()
    log = open(tmp_path / "first.log", "w")
    first = start_pbi(
        "run",
        "--source",
        "demo",
        "--shard",
        "000",
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            holder = _wait_for(lambda: _gpu_holder(instance), 300, "a gpu-pool step to hold the slot", 0.2)
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=30)
            killed = instance.get_run_by_id(holder.run_id)
            assert killed.status == dg.DagsterRunStatus.STARTED, "the killed run is left STARTED"
            assert _gpu_holder(instance) is not None, "... holding the gpu slot"
            assert killed.tags["pbi/pid"] == str(first.pid) and killed.tags["pbi/host"]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
        log.close()

    # one shard, and a short training and evaluation, keep the test short (this is not about them)
    quick = tmp_path / "quick.yaml"
    quick.write_text(
        yaml.safe_dump(
            {"ops": {"checkpoint": {"config": {"max_steps": 2}}, "evaluation": {"config": {"num_inference_steps": 2}}}}
        )
    )
    started = time.monotonic()
    # without the cleanup this waits for the slot forever
    second = run_pbi("run", "--source", "demo", "--shard", "000", "--run-config", str(quick), env=env, timeout=600)
    out = second.stdout + second.stderr
    assert second.returncode == 0, out
    assert f"cleaned up run {holder.run_id[:8]} (assets " in out, out
    assert f"holding gpu:{holder.step_key}" in out and "is gone" in out, out
    assert "waiting for pool" not in out, "nothing waited: the slot was freed before the run"
    print(f"rerun took {time.monotonic() - started:.0f}s:\n{second.stdout}")

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_run_by_id(holder.run_id).status == dg.DagsterRunStatus.FAILURE
        later = [
            r for r in instance.get_runs() if r.run_id != holder.run_id and r.tags.get("pbi/pid") != str(first.pid)
        ]
        assert later and all(r.status == dg.DagsterRunStatus.SUCCESS for r in later)
        assert _gpu_holder(instance) is None


# ---------------------------------------------------------------------------------------------
# runs launched by the daemon (as from the UI or a backfill)

SLOW_CODE_LOCATION = """
import time

import dagster as dg


@dg.asset(pool="gpu")
def slow_gpu_step():
    time.sleep(float(__import__("os").environ.get("SLOW_STEP_SECONDS", "300")))


defs = dg.Definitions(assets=[slow_gpu_step], jobs=[dg.define_asset_job("slow_gpu_job", selection=[slow_gpu_step])])
"""


def _worker_pids(instance, run_id: str) -> tuple[int | None, int | None]:
    """(run worker pid, step worker pid) from Dagster's own engine events."""
    import dagster as dg

    run_worker = step_worker = None
    for entry in instance.all_logs(
        run_id, of_type={dg.DagsterEventType.ENGINE_EVENT, dg.DagsterEventType.STEP_WORKER_STARTED}
    ):
        event = entry.dagster_event
        pid = (event.event_specific_data.metadata or {}).get("pid") if event.event_specific_data else None
        if pid is None:
            continue
        if event.message.startswith("Started process for run"):
            run_worker = int(pid.value)
        elif event.event_type == dg.DagsterEventType.STEP_WORKER_STARTED:
            step_worker = int(pid.value)
    return run_worker, step_worker


def _kill(pid: int | None) -> None:
    if pid:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.skipif(not (BIN / "dagster-daemon").exists(), reason="dagster-daemon not installed")
def test_daemon_launched_run_whose_worker_is_killed_frees_the_slot(tmp_path):
    """Two queued runs of a gpu-pool step under `dagster-daemon run` with the template's
    run_monitoring (shorter intervals). Killing the first run's worker (and its step process):
    the code server fails the run, the monitoring daemon frees its slot, the second run gets it.
    Killing the daemon with its code server and workers: `cleanup_dead_runs` leaves its runs alone."""
    import dagster as dg

    from pbi_assets.run_health import cleanup_dead_runs

    home = _home(tmp_path, {"run_monitoring": {"poll_interval_seconds": 1, "free_slots_after_run_end_seconds": 1}})
    (tmp_path / "slow_defs.py").write_text(textwrap.dedent(SLOW_CODE_LOCATION))
    workspace = tmp_path / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump({"load_from": [{"python_file": {"relative_path": "slow_defs.py", "working_directory": "."}}]})
    )
    env = dict(os.environ, DAGSTER_HOME=str(home), PYTHONUNBUFFERED="1")
    dg.DagsterInstance.from_config(str(home)).dispose()  # storages created once, before the daemon
    daemon_log = open(tmp_path / "daemon.log", "w")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)],
        cwd=tmp_path,
        env=env,
        stdout=daemon_log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    pids: list[int | None] = []
    try:
        run_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        launches = [
            subprocess.Popen(
                [str(BIN / "dagster"), "job", "launch", "-w", str(workspace), "-j", "slow_gpu_job", "--run-id", rid],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for rid in run_ids
        ]
        for launch in launches:
            out, _ = launch.communicate(timeout=180)
            assert launch.returncode == 0, out

        with dg.DagsterInstance.from_config(str(home)) as instance:
            holder = _wait_for(lambda: _gpu_holder(instance), 240, "a queued run's gpu step to hold the slot")
            first, second = holder.run_id, next(r for r in run_ids if r != holder.run_id)
            run_worker, step_worker = _wait_for(
                lambda: all(_worker_pids(instance, first)) and _worker_pids(instance, first), 60, "worker pids"
            )
            pids += [run_worker, step_worker]
            _kill(run_worker)
            _kill(step_worker)
            killed_at = time.monotonic()

            # the code server notices its run worker died (within a second), not run monitoring
            _wait_for(lambda: instance.get_run_by_id(first).is_finished, 30, "the killed run to be marked failed")
            assert instance.get_run_by_id(first).status == dg.DagsterRunStatus.FAILURE
            failure = instance.all_logs(first, of_type=dg.DagsterEventType.ENGINE_EVENT)
            assert any("was terminated by signal 9" in (e.dagster_event.message or "") for e in failure)
            # the monitoring daemon frees the slot free_slots_after_run_end_seconds after the end
            new_holder = _wait_for(
                lambda: (h := _gpu_holder(instance)) and h.run_id != first and h, 90, "the slot to pass on"
            )
            assert new_holder.run_id == second
            print(f"slot passed to the next run {time.monotonic() - killed_at:.1f}s after the kill")

            # killed together with its code server, nobody notices the second run's worker is gone
            # (Dagster cannot health-check a DefaultRunLauncher worker), and pbi, which did not run
            # it, leaves it alone: terminating it in the UI is the way out
            pids += list(_worker_pids(instance, second))
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait(timeout=30)
            time.sleep(3)
            assert cleanup_dead_runs(instance) == []
            assert instance.get_run_by_id(second).status == dg.DagsterRunStatus.STARTED
    finally:
        if daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
        for pid in pids:
            _kill(pid)
        daemon_log.close()
        shutil.copy(tmp_path / "daemon.log", tmp_path / "daemon.log.keep")

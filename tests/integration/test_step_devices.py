"""Model steps on leased devices: the real assets, CPU pseudo-devices (`PBI_DEVICES=cpu,cpu`).

Two concurrent steps never share a device: both slots are first held by two other processes,
two `class_scores` steps (tiny open_clip) start and wait, saying so in their logs; the holders
die together and the two steps take the two slots, each recording its slot in the
materialization metadata and its device in every row."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.pipeline_helpers import materialize_partition, metadata_of

ROOT = Path(__file__).resolve().parents[2]

HOLDER = (
    "import sys, time\n"
    "from pbi_ml.devices import lease_device\n"
    "with lease_device(['cpu', 'cpu'], sys.argv[1], timeout_s=120) as lease:\n"
    "    print(lease.slot, flush=True)\n"
    "    time.sleep(600)\n"
)

STEP = """
import json, sys
from pathlib import Path
from tests.support.pipeline_helpers import materialize_partition, metadata_of
from pbi_ml.storage import Storage
from pbi_ml.tables import CLASS_SCORES
root, shard, run_config = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
result = materialize_partition("demo", shard, root, selection=["class_scores"], run_config=run_config)
meta = metadata_of(result, "class_scores")
devices = Storage(root).read_table(CLASS_SCORES, "demo", shard).column("device").to_pylist()
print("RESULT " + json.dumps({"slot": meta.get("device_slot"), "device": meta["device"], "rows": devices}), flush=True)
"""


def _clip_run_config(tiny_clip_files) -> dict:
    model, weights = tiny_clip_files
    config = {"backend": "clip", "clip_model": model, "clip_pretrained": weights, "min_class_sim": -1.0}
    return {"ops": {"class_scores": {"config": config}}}


@pytest.fixture()
def two_pseudo_devices(tmp_path, monkeypatch):
    leases = tmp_path / "leases"
    monkeypatch.setenv("PBI_DEVICES", "cpu,cpu")
    monkeypatch.setenv("PBI_LEASE_DIR", str(leases))
    return leases


def test_a_model_step_records_its_device_and_an_embedded_one_takes_none(tmp_path, tiny_clip_files, two_pseudo_devices):
    from pbi_ml.storage import Storage
    from pbi_ml.tables import CLASS_SCORES, REMOVALS

    result = materialize_partition(
        "demo",
        "000",
        tmp_path / "data",
        selection=["source_index", "candidates", "class_scores", "removals"],
        run_config=_clip_run_config(tiny_clip_files),
    )
    scored = metadata_of(result, "class_scores")
    assert scored["device"] == "cpu" and scored["device_slot"] == 0
    assert scored["device_lease"] == "cpu (lease slot 0 of 2)"
    removed = metadata_of(result, "removals")  # opencv: no model, no lease
    assert removed["device"] == "cpu" and "device_slot" not in removed
    storage = Storage(tmp_path / "data")
    assert set(storage.read_table(CLASS_SCORES, "demo", "000").column("device").to_pylist()) == {"cpu"}
    assert set(storage.read_table(REMOVALS, "demo", "000").column("device").to_pylist()) == {"cpu"}
    assert list(two_pseudo_devices.glob("*.lock")) and all(  # the lease was given back
        _free(path) for path in two_pseudo_devices.glob("*.lock")
    )


def _free(path: Path) -> bool:
    from filelock import FileLock, Timeout

    try:
        with FileLock(str(path)).acquire(timeout=0):
            return True
    except Timeout:
        return False


def _holder(lease_dir: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lease_dir)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert child.stdout is not None
    child.stdout.readline()  # it holds its slot
    return child


def test_two_concurrent_steps_wait_then_take_two_different_slots(tmp_path, tiny_clip_files, two_pseudo_devices):
    root = tmp_path / "data"
    for shard in ("000", "001"):
        materialize_partition("demo", shard, root, selection=["source_index", "candidates"])
    holders = [_holder(two_pseudo_devices), _holder(two_pseudo_devices)]
    steps, logs = [], []
    try:
        for shard in ("000", "001"):
            log = tmp_path / f"step-{shard}.log"
            logs.append(log)
            steps.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        STEP,
                        str(root),
                        shard,
                        json.dumps(_clip_run_config(tiny_clip_files)),
                    ],
                    cwd=ROOT,
                    stdout=log.open("w"),
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "HF_HUB_OFFLINE": "1"},
                    start_new_session=True,
                )
            )
        deadline = time.monotonic() + 180
        while not all("waiting for a free device" in log.read_text() for log in logs):
            assert all(step.poll() is None for step in steps), [log.read_text()[-2000:] for log in logs]
            assert time.monotonic() < deadline, "the steps never said they were waiting"
            time.sleep(0.5)
        for holder in holders:  # both slots free at the same moment
            os.killpg(holder.pid, signal.SIGKILL)
        outcomes = []
        for step, log in zip(steps, logs, strict=True):
            assert step.wait(timeout=300) == 0, log.read_text()[-3000:]
            line = next(x for x in log.read_text().splitlines() if x.startswith("RESULT "))
            outcomes.append(json.loads(line.removeprefix("RESULT ")))
    finally:
        for child in holders + steps:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
                child.wait()
    assert sorted(o["slot"] for o in outcomes) == [0, 1], outcomes
    assert all(o["device"] == "cpu" and set(o["rows"]) <= {"cpu"} for o in outcomes)
    assert any(o["rows"] for o in outcomes), "a shard with objects records the device in its rows"


def test_an_explicit_device_that_is_not_there_fails_the_step_naming_it(tmp_path, tiny_clip_files, two_pseudo_devices):
    import torch

    missing = f"cuda:{torch.cuda.device_count() + 2}"
    run_config = _clip_run_config(tiny_clip_files)
    run_config["ops"]["class_scores"]["config"]["device"] = missing
    result = materialize_partition(
        "demo",
        "000",
        tmp_path / "data",
        selection=["source_index", "candidates", "class_scores"],
        run_config=run_config,
        raise_on_error=False,
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert f"{missing} is not there" in str(failure.event_specific_data)


def test_pbi_info_shows_devices_and_the_gpu_pool_and_warns_when_they_differ(tmp_path, monkeypatch, capsys):
    import dagster as dg

    from pbi_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PBI_DEVICES", "cpu,cpu")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "devices:     cpu, cpu (2 lease slot(s), from $PBI_DEVICES" in out
    assert "gpu pool:    1 step(s) at once (default_limit in dagster.yaml)" in out
    assert "warning: the gpu pool allows 1 step(s) at once but this node has 2 device(s)" in out
    with dg.DagsterInstance.get() as instance:  # what `dagster instance concurrency set gpu 2` does
        instance.event_log_storage.set_concurrency_slots("gpu", 2)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "gpu pool:    2 step(s) at once (set with `dagster instance concurrency set`)" in out
    assert "warning" not in out

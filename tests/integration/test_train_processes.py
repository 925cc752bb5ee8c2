"""Training on several processes inside the `checkpoint` asset: accelerate launch through Dagster
Pipes, on two CPU pseudo-devices (`PBI_DEVICES=cpu,cpu`, gloo), on the demo's pairs.

    - the run completes, rank 0's log lines reach the step's log through Pipes and its checkpoints
      row the materialization (read back from the instance's event log), the checkpoints row says
      world_size 2, the saved pipeline loads;
    - SIGKILL of the step's process group after the first checkpoint leaves no training process
      behind, and the next materialization resumes at the last checkpoint's step;
    - a run resumes on another number of processes (2 -> 1 -> 2) at the saved step, in the same
      checkpoint folder, and says the world size it resumed from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from pbi_assets.resources import PBIProject
from pbi_ml.storage import Storage
from pbi_ml.train.loop import list_checkpoints
from tests.support.pipeline_helpers import everything, materialize_source

ROOT = Path(__file__).resolve().parents[2]
RUN_CONFIG = {"ops": {"checkpoint": {"config": {"max_steps": 4, "checkpoint_every": 2}}}}


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory):
    """The demo's data plane, descriptions, instructions and splits (no training yet)."""
    root = tmp_path_factory.mktemp("demo-pairs")
    assert all(r.success for r in materialize_source("demo", root))
    return root


@pytest.fixture
def two_cpus(monkeypatch, tmp_path):
    monkeypatch.setenv("PBI_DEVICES", "cpu,cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path / "leases"


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _materialize(root: Path, leases: Path, instance, run_config=RUN_CONFIG):
    return dg.materialize(
        everything(),
        selection=["checkpoint"],
        resources={"pbi": PBIProject(data_root=str(root), device_lease_dir=str(leases))},
        run_config=run_config,
        instance=instance,
    )


def _latest_metadata(instance) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey("checkpoint"))
    assert event is not None and event.asset_materialization is not None
    return {k: getattr(v, "value", v) for k, v in event.asset_materialization.metadata.items()}


def test_two_processes_through_pipes(pairs_root, two_cpus, tmp_path):
    from diffusers import StableDiffusionInstructPix2PixPipeline

    root = _copy(pairs_root, tmp_path / "data")
    instance = dg.DagsterInstance.ephemeral()
    result = _materialize(root, two_cpus, instance)
    assert result.success
    meta = _latest_metadata(instance)  # what the event log holds, from rank 0's result
    assert meta["world_size"] == 2 and meta["steps"] == 4 and meta["latents"] == "cache"
    assert meta["device"] == "cpu,cpu" and "slot 0" in meta["device_lease"] and "slot 1" in meta["device_lease"]
    assert meta["effective_batch_size"] == 4, "smoke: batch 4 x accumulation 1 = 2 per process x 2"
    assert [s for s, _ in meta["loss_curve_json"]] == [1, 2, 3, 4]
    assert meta["latents_encoded"] == meta["train_pairs"] > 0 and meta["latents_reused"] == 0
    assert "training loss" in meta["loss_curve"]
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any("training step 4/4" in m for m in logs), "rank 0's progress lines came through pipes.log"
    assert any("training on 2 process(es)" in m for m in logs)

    row = Storage(root).global_dir("checkpoints") / str(meta["checkpoint_id"])
    assert [step for step, _ in list_checkpoints(row)] == [2, 4]
    summary = json.loads((row / "training_summary.json").read_text())
    assert summary["num_processes"] == 2 and summary["per_process_batch"] == 2
    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(str(meta["pipeline_dir"]))
    assert pipe.unet.config.in_channels == 8

    from pbi_ml.catalog import read_view

    rows = read_view(Storage(root), "checkpoints").to_pylist()  # the catalog view's columns
    assert [(r["world_size"], r["latents"], r["effective_batch_size"], r["device"]) for r in rows] == [
        (2, "cache", 4, "cpu")
    ]


KILLED_CHILD = """
import dagster as dg
from tests.integration.test_train_processes import _materialize, RUN_CONFIG
from pathlib import Path
_materialize(Path({root!r}), Path({leases!r}), dg.DagsterInstance.ephemeral())
"""


def _tree(pid: int) -> list[int]:
    import psutil

    try:
        return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        return [pid]


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_sigkill_after_the_first_checkpoint_resumes_there(pairs_root, two_cpus, tmp_path):
    pytest.importorskip("psutil")
    root = _copy(pairs_root, tmp_path / "data")
    code = KILLED_CHILD.format(root=str(root), leases=str(two_cpus))
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the step, the launcher and what they start
    )
    checkpoints = Storage(root).global_dir("checkpoints")
    deadline = time.monotonic() + 300
    tree: list[int] = []
    try:
        while time.monotonic() < deadline and child.poll() is None:
            tree = sorted(set(tree) | set(_tree(child.pid)))
            if list(checkpoints.glob("*/checkpoints/step-*")):
                break
            time.sleep(0.05)
        assert child.poll() is None, "the run ended before its first checkpoint"
        tree = sorted(set(tree) | set(_tree(child.pid)))
        assert len(tree) >= 4, f"step, launcher and two workers: {tree}"
        os.killpg(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(_alive(p) for p in tree):
        time.sleep(0.1)
    assert not [p for p in tree if _alive(p)], "a training process outlived the kill"

    (run_dir,) = list(checkpoints.glob("*/checkpoints"))
    saved = [step for step, _ in list_checkpoints(run_dir.parent)]
    assert saved and saved[-1] < 4, f"killed before the end: {saved}"
    instance = dg.DagsterInstance.ephemeral()
    assert _materialize(root, two_cpus, instance).success
    meta = _latest_metadata(instance)
    assert meta["resumed_from_step"] == saved[-1] and meta["steps"] == 4 and meta["world_size"] == 2
    assert meta["latents_encoded"] == 0, "the killed run's latent cache is reused"
    assert [s for s, _ in meta["loss_curve_json"]] == [1, 2, 3, 4]


def test_a_run_resumes_on_another_number_of_processes(pairs_root, two_cpus, tmp_path, monkeypatch):
    root = _copy(pairs_root, tmp_path / "data")
    seen = []
    for devices, steps in (("cpu,cpu", 2), ("cpu", 4), ("cpu,cpu", 6)):
        monkeypatch.setenv("PBI_DEVICES", devices)
        instance = dg.DagsterInstance.ephemeral()
        run_config = {"ops": {"checkpoint": {"config": {"max_steps": steps, "checkpoint_every": 2}}}}
        result = _materialize(root, two_cpus, instance, run_config)
        assert result.success
        meta = _latest_metadata(instance)
        logs = [e.message for e in instance.all_logs(result.run_id)]
        seen.append((meta["world_size"], meta["resumed_from_step"], meta["resumed_world_size"], meta["steps"]))
        assert [s for s, _ in meta["loss_curve_json"]] == list(range(1, steps + 1))
        assert meta["effective_batch_size"] == 4
        assert any("noise stream changed" in m for m in logs) == (steps > 2)
    assert seen == [(2, -1, -1, 2), (1, 2, 2, 4), (2, 4, 1, 6)], "each run resumes at the saved step, not at 0"
    (run_dir,) = list(Storage(root).global_dir("checkpoints").glob("*/checkpoints"))
    assert [step for step, _ in list_checkpoints(run_dir.parent)] == [4, 6], "one run folder for every world size"

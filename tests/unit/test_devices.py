"""Device leases on CPU pseudo-devices: exclusive across processes, freed by SIGKILL, waiting."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pbi_ml.devices import lease_device, node_devices, parse_devices
from pbi_ml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
HOLDER = (
    "import sys, time\n"
    "from pbi_ml.devices import lease_device\n"
    "with lease_device(['cpu', 'cpu'], sys.argv[1], timeout_s=60) as lease:\n"
    "    print(lease.slot, flush=True)\n"
    "    time.sleep(600)\n"
)


def _holder(lease_dir: Path) -> tuple[subprocess.Popen, int]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(lease_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout is not None
    return child, int(child.stdout.readline())


def test_two_processes_hold_two_different_slots_and_a_third_waits(tmp_path):
    first, slot_a = _holder(tmp_path)
    second, slot_b = _holder(tmp_path)
    try:
        assert {slot_a, slot_b} == {0, 1}
        lines: list[str] = []
        with pytest.raises(TimeoutError, match="all 2 leased"):
            with lease_device(["cpu", "cpu"], tmp_path, timeout_s=1.0, log_every_s=0.3, on_wait=lines.append):
                pass
        assert lines and lines[0].startswith("waiting for a free device: all 2")
        assert len(lines) >= 2, "the wait is logged again every log_every_s"
    finally:
        for child in (first, second):
            child.kill()
            child.wait()


def test_a_sigkilled_holder_frees_its_device(tmp_path):
    child, slot = _holder(tmp_path)
    with lease_device(["cpu", "cpu"], tmp_path, timeout_s=5) as mine:
        assert mine.slot != slot
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        started = time.monotonic()
        with lease_device(["cpu", "cpu"], tmp_path, timeout_s=5) as freed:
            assert freed.slot == slot and freed.device == "cpu"
        assert time.monotonic() - started < 5


def test_devices_config_and_env_override(monkeypatch, tmp_path):
    monkeypatch.delenv("PBI_DEVICES", raising=False)
    assert parse_devices("auto") == ("auto",) and parse_devices(["cpu", "cpu"]) == ("cpu", "cpu")
    assert node_devices(("cpu", "cpu")) == ["cpu", "cpu"]
    monkeypatch.setenv("PBI_DEVICES", "cpu,cpu,cpu")
    assert node_devices(("cpu",)) == ["cpu", "cpu", "cpu"]
    import torch

    monkeypatch.setenv("PBI_DEVICES", "auto")
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert node_devices(("cpu",)) == ([f"cuda:{i}" for i in range(visible)] or ["cpu"])
    with pytest.raises(ConfigError, match="gpu0"):
        parse_devices(["gpu0"])


def test_a_device_that_is_not_there_fails_naming_it(monkeypatch):
    import torch

    monkeypatch.delenv("PBI_DEVICES", raising=False)
    missing = f"cuda:{torch.cuda.device_count() + 3}"
    with pytest.raises(ConfigError, match=missing.replace(":", r"\:")):
        node_devices((missing,))


def test_pbi_yaml_declares_the_devices(tmp_path, monkeypatch):
    from pbi_ml.config import load_project_config

    monkeypatch.delenv("PBI_DATA_ROOT", raising=False)
    (tmp_path / "pbi.yaml").write_text("devices: [cpu, cpu]\n")
    assert load_project_config(tmp_path / "pbi.yaml").devices == ("cpu", "cpu")
    (tmp_path / "pbi.yaml").write_text("{}\n")
    assert load_project_config(tmp_path / "pbi.yaml").devices == ("auto",)
    (tmp_path / "pbi.yaml").write_text("devices: [tpu]\n")
    with pytest.raises(ConfigError, match="pbi.yaml: devices"):
        load_project_config(tmp_path / "pbi.yaml")

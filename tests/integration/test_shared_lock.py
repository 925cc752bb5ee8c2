"""The source-index build lock holds across processes the way it must across pods on NFS: a lock
file created with O_CREAT | O_EXCL, stale when its holder died (pid gone on this host, or no
heartbeat for stale_after_s from any host). Real processes contend; no flock is involved."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pbi_ml.shared_lock import create_lock

ROOT = Path(__file__).resolve().parents[2]

HOLD = """
import sys, time
from pbi_ml.shared_lock import create_lock

lock, log, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
with create_lock(lock, heartbeat_s=0.2):
    with open(log, "a") as f:
        f.write(f"start {time.time()}\\n")
    print("held", flush=True)
    time.sleep(seconds)
    with open(log, "a") as f:
        f.write(f"end {time.time()}\\n")
"""


def _python(*args: str, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, text=True, **kwargs)


def test_two_processes_never_hold_the_lock_at_once(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    lock, log = tmp_path / "shared" / "build.lock", tmp_path / "log.txt"
    procs = [_python(str(script), str(lock), str(log), "1.0") for _ in range(3)]
    for proc in procs:
        assert proc.wait(timeout=60) == 0
    events = [line.split() for line in log.read_text().splitlines()]
    assert [kind for kind, _ in events] == ["start", "end"] * 3, "each holder ends before the next starts"
    assert not lock.exists(), "released on exit"


def test_a_killed_holder_frees_the_lock_at_once_on_its_host(tmp_path):
    script = tmp_path / "hold.py"
    script.write_text(HOLD)
    lock = tmp_path / "build.lock"
    holder = _python(str(script), str(lock), str(tmp_path / "log.txt"), "300", stdout=subprocess.PIPE)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert lock.exists(), "kill -9 leaves the file behind (no flock for the kernel to release)"
    started = time.monotonic()
    with create_lock(lock, stale_after_s=3600, timeout_s=10):  # its pid is gone: stale at once
        pass
    assert time.monotonic() - started < 2


def test_a_lock_from_another_node_is_broken_only_without_heartbeat(tmp_path):
    lock = tmp_path / "build.lock"
    other = {"host": "another-pod-" + socket.gethostname(), "pid": 1, "token": "t"}
    lock.write_text(json.dumps(other))
    with pytest.raises(TimeoutError, match="still held"):  # a live holder elsewhere: wait
        with create_lock(lock, stale_after_s=30, timeout_s=0.5):
            pass
    old = time.time() - 60
    os.utime(lock, (old, old))  # its heartbeat stopped a minute ago: the pod died
    with create_lock(lock, stale_after_s=30, timeout_s=5) as me:
        assert json.loads(lock.read_text())["token"] == me["token"]
    assert not lock.exists()


def test_the_holder_heartbeat_keeps_a_long_build_from_going_stale(tmp_path):
    lock = tmp_path / "build.lock"
    with create_lock(lock, heartbeat_s=0.1):
        first = lock.stat().st_mtime
        time.sleep(0.5)
        assert lock.stat().st_mtime > first


PARSE = """
import sys, time
from pathlib import Path
import pbi_ml.sources.index as index
from pbi_ml.config import SourceConfig
from pbi_ml.storage import Storage

images, annotations, root, shard, marks = sys.argv[1:6]
real = index.read_source_index

def counted(*args, **kwargs):
    with open(marks, "a") as f:
        f.write("parse\\n")
    time.sleep(1.0)  # hold the build while the other process arrives
    return real(*args, **kwargs)

index.read_source_index = counted
source = SourceConfig(name="gen_coco", format="coco", images=images, annotations=annotations)
print(index.shard_index(source, shard, 2, Storage(root)).num_rows)
"""


def test_two_processes_building_one_source_index_parse_it_once(tmp_path, session_dir):
    """Two shards of a source in two processes (two pods on a shared data root): one parses,
    the other waits on the lock file and reads the cached index."""
    datasets = session_dir / "datasets" / "gen_coco"
    script = tmp_path / "parse.py"
    script.write_text(textwrap.dedent(PARSE))
    marks = tmp_path / "marks.txt"
    args = [str(datasets / "images"), str(datasets / "annotations.json"), str(tmp_path / "data")]
    procs = [_python(str(script), *args, shard, str(marks), stdout=subprocess.PIPE) for shard in ("000", "001")]
    rows = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        rows.append(int(out.strip().splitlines()[-1]))
    assert marks.read_text().splitlines() == ["parse"]
    assert sum(rows) > 0
    assert not list((tmp_path / "data").rglob("build.lock")), "the lock file is gone after the build"

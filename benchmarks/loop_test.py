"""Run one test (a pytest node id) N times in a row, each in a fresh pytest process, and print how many
passed: the proof that a concurrency fix holds (a flaky test passes 10 of 10, not once).

    .venv/bin/python benchmarks/loop_test.py --times 10 \
        "tests/integration/test_postgres_instance.py::test_two_pbi_runs_of_two_sources_at_once_share_the_postgres_instance"

Postgres tests use the server $DAGSTER_PG_* names (`eval "$(.ci/postgres)"`), else a throwaway cluster.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("node", help="a pytest node id, e.g. tests/unit/test_x.py::test_y")
    parser.add_argument("--times", type=int, default=10)
    args = parser.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    passed = 0
    for i in range(1, args.times + 1):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", args.node],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        ok = done.returncode == 0
        passed += ok
        print(f"run {i}/{args.times}: {'passed' if ok else 'FAILED'} in {time.monotonic() - started:.0f}s", flush=True)
        if not ok:
            print(done.stdout[-3000:] + done.stderr[-2000:], flush=True)
    print(f"{passed} passed, {args.times - passed} failed")
    return 0 if passed == args.times else 1


if __name__ == "__main__":
    sys.exit(main())

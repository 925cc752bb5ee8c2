"""The cost of a no-op re-run of a finished item stage, against the floor of `stat`-ing its files.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/noop_rerun_benchmark.py [--items 2000 --workdir /tmp/pbi-noop-bench]

Runs a one-file-per-item stage through `pbi_ml.stages.item_stage.run_item_stage`: each item writes
a ~300 kB PNG of seeded noise (incompressible, the size of a pairs-stage image) with
`pbi_ml.imageio.save_png`. Then, page cache warm: the median of `--repeats` no-op re-runs of the
stage (every item finished: trust check, table write) and of one `os.stat` of every output file
(the floor), and their ratio. Run it with PYTHONPATH pointing at another checkout to time that
code on the same machine: the stage uses only the ItemStage interface both share.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pbi_ml.imageio import save_png
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, run_item_stage
from pbi_ml.storage import Storage
from pbi_ml.tables import TableSpec

BENCH = TableSpec(name="noop_bench", schema=pa.schema([("key", pa.string()), ("status", pa.string())]), key=("key",))


class NoiseStage(ItemStage):
    table = BENCH
    batch_size = 16
    config_id = "noise-v1"

    def __init__(self, n: int):
        self.n = n

    def items(self) -> list[StageItem]:
        return [StageItem(key=f"{i:07d}", row={"seed": i}, upstream=str(i)) for i in range(self.n)]

    def write(self, item: StageItem, result, directory: Path) -> ItemOutput:
        image = np.random.default_rng(result["seed"]).integers(0, 256, (320, 320, 3), dtype=np.uint8)
        return ItemOutput(files={"image": save_png(image, directory / "image.png")})

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        return [{"key": item.key, "status": record["status"]}]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return self.rows(item, record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workdir", default="/tmp/pbi-noop-bench")
    args = parser.parse_args()
    shutil.rmtree(args.workdir, ignore_errors=True)
    storage, stage = Storage(args.workdir), NoiseStage(args.items)
    start = time.perf_counter()
    first = run_item_stage(storage, stage, "bench", "000")
    print(f"first run: {first.counts['items_computed_this_run']} items in {time.perf_counter() - start:.1f} s")
    files = sorted((storage.root / "files").rglob("*.png"))
    size = sum(p.stat().st_size for p in files) / len(files)
    bookkeeping = sum(1 for p in (storage.root / "items").rglob("*") if p.is_file())
    print(f"{len(files)} files, {size / 1e3:.0f} kB each; {bookkeeping} bookkeeping files")

    def timed(fn) -> float:
        fn()  # warm-up
        runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - start)
        return statistics.median(runs)

    rerun = timed(lambda: run_item_stage(storage, stage, "bench", "000"))
    assert run_item_stage(storage, stage, "bench", "000").counts["items_computed_this_run"] == 0
    floor = timed(lambda: [os.stat(p) for p in files])
    print(f"no-op re-run {rerun:.3f} s ({rerun / len(files) * 1e3:.3f} ms/item); stat floor {floor:.4f} s")
    print(f"ratio to the stat floor: {rerun / floor:.1f}x")
    shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

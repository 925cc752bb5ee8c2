"""The bookkeeping at PIPE scale (about 1M pairs), each figure against its goal (docs/operations.md).

    PYTHONPATH=$PWD .venv/bin/python benchmarks/scale_simulation.py [--images 200000 --instances 1000000 \
        --items 100000 --pairs 1000000 --workdir /tmp/pbi-scale-sim]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/scale_simulation.py --images 2000 --instances 10000 \
        --items 2000 --pairs 20000     # a quick run

No model runs: what is timed is everything around the models, on synthetic data.

1. source: a COCO instances file of `--instances` instances over `--images` images (seeded, the
   candidates benchmark's generator; no image files: `check_images` is off). `pbi check` from
   scratch (the full streamed parse, what also builds the cached index), then `pbi check` again
   with that index current (goal <= 10 s).
2. candidates at full size: the source_index and candidates stages on every shard.
3. the item mechanism (`run_item_stage`) with a trivial stage, `--items` items in one partition,
   each writing one small PNG with `save_png`: the first run against the bare encode of the same
   PNGs, then a no-op re-run against the floor of one `os.stat` per output file (goal <= 3x; and
   that rate at 1M items, goal < 1 minute), and the bookkeeping files (goal <= 1 per 100 items).
4. the catalog at `--pairs` pairs (the catalog benchmark's generator, its queries): build time,
   file size, slowest query on a fresh read-only connection (goals <= 5 s, <= 100 MiB, < 100 ms).
5. the no-op re-run of everything: the item stage, the cached-index check and the catalog build
   once more.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import candidates_benchmark, catalog_benchmark  # noqa: E402
from pbi_ml.catalog import build_catalog  # noqa: E402
from pbi_ml.check import check_source  # noqa: E402
from pbi_ml.config import CandidateConfig, SourceConfig, SourceIndexConfig  # noqa: E402
from pbi_ml.imageio import png_bytes, save_png  # noqa: E402
from pbi_ml.stages.candidates import run_candidates  # noqa: E402
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, run_item_stage  # noqa: E402
from pbi_ml.stages.source_index import run_source_index  # noqa: E402
from pbi_ml.storage import Storage  # noqa: E402
from pbi_ml.tables import TableSpec  # noqa: E402

SIM = TableSpec(name="scale_sim", schema=pa.schema([("key", pa.string()), ("status", pa.string())]), key=("key",))
TILE = 32  # side of each item's PNG


def _tile(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (TILE, TILE, 3), dtype=np.uint8)


class TileStage(ItemStage):
    """One small PNG of seeded noise per item, written with the project's save function."""

    table = SIM
    batch_size = 256
    config_id = "tile-v1"

    def __init__(self, n: int):
        self.n = n

    def items(self) -> list[StageItem]:
        return [StageItem(key=f"{i:07d}", row={"seed": i}, upstream=str(i)) for i in range(self.n)]

    def write(self, item: StageItem, result, directory: Path) -> ItemOutput:
        return ItemOutput(files={"tile": save_png(_tile(result["seed"]), directory / "tile.png")})

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        return [{"key": item.key, "status": record["status"]}]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return self.rows(item, record)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def line(what: str, value: str, goal: str, ok: bool | None = None) -> None:
    verdict = "" if ok is None else ("  [meets goal]" if ok else "  [MISSES goal]")
    print(f"  {what:<44}{value:>28}   goal {goal}{verdict}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200_000)
    parser.add_argument("--instances", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/pbi-scale-sim")
    args = parser.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    (work / "images").mkdir(parents=True)

    print(f"1. source: {args.instances:,} instances over {args.images:,} images", flush=True)
    annotations = work / "instances.json"
    seconds, _ = timed(lambda: candidates_benchmark.generate(annotations, args.images, args.instances, args.seed))
    print(f"  generated {annotations} ({annotations.stat().st_size / 2**20:,.0f} MiB) in {seconds:.0f} s")
    source = SourceConfig(name="sim", format="coco", images=str(work / "images"), annotations=str(annotations))
    storage = Storage(work / "data")
    full_check, report = timed(lambda: check_source(source, args.shards, sample=0, data_root=str(storage.root)))
    assert not report.index_from_cache and report.instances == args.instances, report
    shard_names = [f"{i:03d}" for i in range(args.shards)]
    index_config = SourceIndexConfig(num_shards=args.shards)
    indexing, _ = timed(lambda: [run_source_index(storage, source, s, index_config) for s in shard_names])
    cached_check, report = timed(lambda: check_source(source, args.shards, sample=0, data_root=str(storage.root)))
    assert report.index_from_cache and report.instances == args.instances, report
    line("pbi check, no cached index (full parse)", f"{full_check:.1f} s", "-")
    line("pbi check, cached index current", f"{cached_check:.1f} s", "<= 10 s", cached_check <= 10)

    print("2. candidates at full size", flush=True)
    candidate_config = CandidateConfig(check_images=False)
    candidates, results = timed(lambda: [run_candidates(storage, source, s, candidate_config) for s in shard_names])
    kept = sum(r.counts["kept"] for r in results)
    line(
        f"source_index + candidates, {args.shards} shards",
        f"{indexing:.1f} s + {candidates:.1f} s",
        "-",
    )
    print(f"  {sum(r.counts['instances'] for r in results):,} instances, {kept:,} kept")

    print(f"3. item mechanism: {args.items:,} items in one partition, one {TILE}x{TILE} PNG each", flush=True)
    stage = TileStage(args.items)
    first, result = timed(lambda: run_item_stage(storage, stage, "sim", "000"))
    assert result.counts["items_computed_this_run"] == args.items
    encode, _ = timed(lambda: [png_bytes(_tile(i)) for i in range(args.items)])
    files = sorted((storage.root / "files" / SIM.name).rglob("*.png"))
    bookkeeping = sum(1 for p in (storage.root / "items" / SIM.name).rglob("*") if p.is_file())
    noop, result = timed(lambda: run_item_stage(storage, stage, "sim", "000"))
    assert result.counts["items_computed_this_run"] == 0
    floor = min(timed(lambda: [os.stat(p) for p in files])[0] for _ in range(3))
    per_item = noop / args.items
    line("first run / bare PNG encode", f"{first:.1f} s / {encode:.1f} s = {first / encode:.1f}x", "-")
    line("no-op re-run / stat floor", f"{noop:.2f} s / {floor:.3f} s = {noop / floor:.1f}x", "<= 3x", noop / floor <= 3)
    line("no-op re-run at 1M items (extrapolated)", f"{per_item * 1e6:.0f} s", "< 60 s", per_item * 1e6 < 60)
    line(
        "bookkeeping files per 100 items",
        f"{bookkeeping} for {args.items:,} = {100 * bookkeeping / args.items:.3f}",
        "<= 1",
        100 * bookkeeping / args.items <= 1,
    )

    print(f"4. catalog at {args.pairs:,} pairs", flush=True)
    pairs = Storage(work / "catalog")
    seconds, _ = timed(lambda: catalog_benchmark.generate(pairs, args.pairs, args.partitions, args.seed))
    print(f"  generated the pairs tables in {seconds:.0f} s")
    build, _ = timed(lambda: build_catalog(pairs, force=True))
    size = pairs.catalog_path.stat().st_size / 2**20
    import duckdb

    con = duckdb.connect(str(pairs.catalog_path), read_only=True)
    row = con.execute(
        "SELECT pair_id FROM pairs WHERE status = 'ok' ORDER BY hash(pair_id) LIMIT 1 OFFSET 7"
    ).fetchone()
    con.close()
    assert row is not None
    latency = catalog_benchmark.time_queries(pairs.catalog_path, catalog_benchmark.queries(row[0]), repeats=3)
    slowest = max(v["connect"] for k, v in latency.items() if k)
    line("catalog build", f"{build:.1f} s", "<= 5 s", build <= 5)
    line("catalog file", f"{size:.0f} MiB", "<= 100 MiB", size <= 100)
    line("slowest query, fresh connection (pbi sql)", f"{slowest:.0f} ms", "< 100 ms", slowest < 100)

    print("5. no-op re-run of everything", flush=True)
    again, result = timed(lambda: run_item_stage(storage, stage, "sim", "000"))
    assert result.counts["items_computed_this_run"] == 0
    check_again, report = timed(lambda: check_source(source, args.shards, sample=0, data_root=str(storage.root)))
    assert report.index_from_cache
    rebuild, _ = timed(lambda: build_catalog(pairs))
    line("item stage / check / catalog", f"{again:.2f} s / {check_again:.1f} s / {rebuild:.1f} s", "-")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

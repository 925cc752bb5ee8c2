"""Catalog query latency: `pairs` as a stored DuckDB table vs the view that joins four Parquet globs.

    .venv/bin/python benchmarks/catalog_benchmark.py [--pairs 1000000 --partitions 128 \
        --workdir /tmp/pbi-catalog-bench]
    .venv/bin/python benchmarks/catalog_benchmark.py --pairs 50000 --partitions 16     # a quick run

1. Generates (seeded; reused when already present) `--pairs` pairs in our table layout, spread
   evenly over `--partitions` partitions (2 sources x partitions/2 shards): per partition one
   Parquet file each of `pairs`, `descriptions`, `instructions` and `splits`, with the real
   schemas (`pbi_ml.tables`) written by `Storage.write_table`. 80 COCO class names with a
   Zipf-like frequency, 9 object locations, absolute file paths as the pairs stage writes them,
   2 % failed pairs (no description, no instructions, no split row), 5 % of the ok pairs in test.
2. Builds the catalog twice from the same files:
   baseline: the previous design, every name a VIEW (`pairs` joins the four globs per query),
             `build_catalog(storage, path=..., materialize=())`;
   tables:   the current design, `build_catalog(storage)`: `pairs` is a table stored in the
             catalog file at build time (`pairs_live` keeps the joined view).
3. Runs each query of the set below on each catalog, opened read-only as users open it: one
   untimed warm-up, then the median of `--repeats` (5) timed runs on an open connection
   (execute + fetch all rows), and the median of `--repeats` runs through a fresh connection
   each time (connect + execute + fetch + close, what `pbi sql` does; the median time of the
   duckdb.connect call alone is printed with it). Ratios are the baseline's median over the tables'
   median, both measured in this run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pbi_ml import tables  # noqa: E402
from pbi_ml.catalog import build_catalog  # noqa: E402
from pbi_ml.masks import LOCATION_GRID  # noqa: E402
from pbi_ml.storage import Storage, safe_name  # noqa: E402

SOURCES = ("coco", "openimages")
CLASS_NAMES = tuple(
    name.replace("_", " ")
    for name in (
        "person bicycle car motorcycle airplane bus train truck boat traffic_light fire_hydrant stop_sign "
        "parking_meter bench bird cat dog horse sheep cow elephant bear zebra giraffe backpack umbrella "
        "handbag tie suitcase frisbee skis snowboard sports_ball kite baseball_bat baseball_glove skateboard "
        "surfboard tennis_racket bottle wine_glass cup fork knife spoon bowl banana apple sandwich orange "
        "broccoli carrot hot_dog pizza donut cake chair couch potted_plant bed dining_table toilet tv laptop "
        "mouse remote keyboard cell_phone microwave oven toaster sink refrigerator book clock vase scissors "
        "teddy_bear hair_drier toothbrush"
    ).split()
)
LOCATIONS = tuple(cell for row in LOCATION_GRID for cell in row)
COLOURS = ("red", "dark blue", "white", "black", "grey", "green", "brown", "yellow", "orange", "pink")
SIZES = ("small", "medium-sized", "large")
QUERY_CLASS = "dog"


def _zipf_weights(n: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** 0.9
    return weights / weights.sum()


def partition_keys(partitions: int) -> list[tuple[str, str]]:
    per_source = max(1, partitions // len(SOURCES))
    keys = [(source, f"{shard:03d}") for source in SOURCES for shard in range(per_source)]
    return keys[:partitions] if partitions >= len(SOURCES) else keys[:1]


def _table(spec: tables.TableSpec, columns: dict, n: int):
    """The columns as an Arrow table of `spec`'s schema; a schema column not generated here is null
    (the registry may grow a column before this benchmark learns it)."""
    import pyarrow as pa

    return pa.Table.from_pydict({name: columns.get(name, [None] * n) for name in spec.schema.names}, schema=spec.schema)


def generate_partition(storage: Storage, source: str, shard: str, n: int, seed: int) -> None:
    """One partition's pairs, descriptions, instructions and splits, with the real schemas."""
    rng = np.random.default_rng(seed)
    categories = rng.choice(len(CLASS_NAMES), size=n, p=_zipf_weights(len(CLASS_NAMES)))
    image_ids = [f"{i:012d}" for i in rng.integers(1, 10**9, size=n)]
    annotation_ids = [str(i) for i in rng.integers(1, 10**10, size=n)]
    pair_ids = [f"{source}/{img}/{ann}" for img, ann in zip(image_ids, annotation_ids, strict=True)]
    ok = rng.random(n) >= 0.02
    widths = rng.choice([640, 480, 500, 612], size=n).astype(np.int32)
    heights = rng.choice([480, 427, 375, 640], size=n).astype(np.int32)
    bbox = rng.random((n, 4)) * 300
    area_fraction = rng.random(n) * 0.4 + 0.005
    locations = rng.integers(0, len(LOCATIONS), size=n)
    candidate = rng.integers(0, 3, size=n).astype(np.int32)
    digests = [rng.bytes(16).hex() for _ in range(n)]
    colours = rng.integers(0, len(COLOURS), size=n)
    sizes = rng.integers(0, len(SIZES), size=n)
    split_test = rng.random(n) < 0.05
    files_root = storage.root / "files" / tables.PAIRS.name / safe_name(source) / shard
    names = [CLASS_NAMES[c] for c in categories]

    def path(kind: str) -> list[str | None]:
        return [
            f"{files_root}/{safe_name(pid)}/{kind}.png" if good else None
            for pid, good in zip(pair_ids, ok, strict=True)
        ]

    status = ["ok" if good else "failed" for good in ok]
    error = [None if good else "removal_size_mismatch" for good in ok]
    scores = {name: rng.random(n) for name in tables.STATS_COLUMNS}
    pairs = {
        "pair_id": pair_ids,
        "source": [source] * n,
        "shard": [shard] * n,
        "image_id": image_ids,
        "annotation_id": annotation_ids,
        "category": names,
        "category_id": [str(c + 1) for c in categories],
        "category_synonyms": [[name] for name in names],
        "width": widths,
        "height": heights,
        "bbox_x": bbox[:, 0],
        "bbox_y": bbox[:, 1],
        "bbox_w": bbox[:, 2],
        "bbox_h": bbox[:, 3],
        "area_fraction": area_fraction,
        "object_location": [LOCATIONS[i] for i in locations],
        "source_image": path("source"),
        "target_image": path("target"),
        "mask": path("mask"),
        "edit_mask": path("edit_mask"),
        "candidate": candidate,
        "method": [f"telea r={3 + 2 * int(c)}" for c in candidate],
        "removal_backend": ["opencv"] * n,
        "scoring_backend": ["stats"] * n,
        **scores,
        **{name: [None] * n for name in tables.CLIP_COLUMNS},
        "clip_null_reason": ["scoring backend 'stats': no CLIP scores"] * n,
        "status": status,
        "error": error,
        "output_digest": [d if good else None for d, good in zip(digests, ok, strict=True)],
    }
    storage.write_table(tables.PAIRS, source, shard, _table(tables.PAIRS, pairs, n))

    descriptions = [
        f"a {SIZES[s]} {COLOURS[c]} {name}" if good else None
        for s, c, name, good in zip(sizes, colours, names, ok, strict=True)
    ]
    common = {
        "pair_id": pair_ids,
        "source": [source] * n,
        "shard": [shard] * n,
        "image_id": image_ids,
        "annotation_id": annotation_ids,
        "category": names,
    }
    described = {
        **common,
        "description": descriptions,
        "describe_backend": ["pixels"] * n,
        "describe_model": [None] * n,
        "status": status,
        "error": [None if good else "upstream_failed" for good in ok],
    }
    storage.write_table(tables.DESCRIPTIONS, source, shard, _table(tables.DESCRIPTIONS, described, n))

    where = [LOCATIONS[i] for i in locations]
    instructions = {
        **common,
        "object_location": where,
        "instruction_class": [f"add a {name}" if good else None for name, good in zip(names, ok, strict=True)],
        "instruction_vlm_llm": [
            f"put {d} in the {w} of the picture" if d else None for d, w in zip(descriptions, where, strict=True)
        ],
        "instruction_vlm_llm_raw": [
            f"Put {d} in the {w}." if d else None for d, w in zip(descriptions, where, strict=True)
        ],
        "instruction_ref": [None] * n,
        "instruction_check": ["passed" if good else None for good in ok],
        "instruction_check_similarity": rng.random(n),
        "instruct_backend": ["templates"] * n,
        "status": status,
        "error": [None if good else "upstream_failed" for good in ok],
    }
    storage.write_table(tables.INSTRUCTIONS, source, shard, _table(tables.INSTRUCTIONS, instructions, n))

    keep = np.flatnonzero(ok)
    splits = {
        "pair_id": [pair_ids[i] for i in keep],
        "source": [source] * len(keep),
        "shard": [shard] * len(keep),
        "image_id": [image_ids[i] for i in keep],
        "annotation_id": [annotation_ids[i] for i in keep],
        "category": [names[i] for i in keep],
        "split": ["test" if split_test[i] else "train" for i in keep],
        "split_rule": ["hash"] * len(keep),
    }
    storage.write_table(tables.SPLITS, source, shard, _table(tables.SPLITS, splits, len(keep)))


def generate(storage: Storage, num_pairs: int, partitions: int, seed: int) -> list[tuple[str, str]]:
    keys = partition_keys(partitions)
    base, extra = divmod(num_pairs, len(keys))
    for i, (source, shard) in enumerate(keys):
        generate_partition(storage, source, shard, base + (1 if i < extra else 0), seed * 100_003 + i)
    return keys


def queries(pair_id: str) -> dict[str, str]:
    p = tables.PAIRS.name
    pid = pair_id.replace("'", "''")
    return {
        "count": f"SELECT count(*) FROM {p}",
        "top classes": f"SELECT category, count(*) AS n FROM {p} GROUP BY category ORDER BY n DESC, category LIMIT 10",
        "one class, test split": (
            f"SELECT pair_id, source_image, target_image, instruction_vlm_llm FROM {p} "
            f"WHERE category = '{QUERY_CLASS}' AND split = 'test'"
        ),
        "split x location": f"SELECT split, object_location, count(*) FROM {p} GROUP BY ALL ORDER BY ALL",
        "one pair by id": f"SELECT * FROM {p} WHERE pair_id = '{pid}'",
    }


def time_queries(path: Path, sqls: dict[str, str], repeats: int) -> dict[str, dict[str, float]]:
    """{query: {"open": median ms on an open connection, "connect": median ms with a fresh one, "rows": n}},
    and under "" the median ms of duckdb.connect alone ("open_file")."""
    import duckdb

    out: dict[str, dict[str, float]] = {}
    con = duckdb.connect(str(path), read_only=True)
    try:
        for name, sql in sqls.items():
            rows = len(con.execute(sql).fetchall())  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                con.execute(sql).fetchall()
                times.append(time.perf_counter() - start)
            out[name] = {"open": 1000 * statistics.median(times), "rows": rows}
    finally:
        con.close()
    opening = []
    for name, sql in sqls.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fresh = duckdb.connect(str(path), read_only=True)
            opening.append(time.perf_counter() - start)
            try:
                fresh.execute(sql).fetchall()
            finally:
                fresh.close()
            times.append(time.perf_counter() - start)
        out[name]["connect"] = 1000 * statistics.median(times)
    out[""] = {"open_file": 1000 * statistics.median(opening)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/pbi-catalog-bench")
    args = parser.parse_args()

    root = Path(args.workdir) / f"pairs{args.pairs}_parts{args.partitions}_seed{args.seed}"
    storage = Storage(root)
    done = root / "generated.ok"
    keys = partition_keys(args.partitions)
    if done.exists():
        print(f"reusing {root}")
    else:
        start = time.perf_counter()
        keys = generate(storage, args.pairs, args.partitions, args.seed)
        done.write_text("ok\n")
        print(f"generated {root} in {time.perf_counter() - start:.1f} s")
    parquet_mb = sum(f.stat().st_size for f in (root / "tables").rglob("*.parquet")) / 2**20
    print(f"{args.pairs:,} pairs in {len(keys)} partitions ({len(SOURCES)} sources); Parquet {parquet_mb:,.0f} MiB")

    import duckdb

    baseline_path = root / "catalog_views.duckdb"
    start = time.perf_counter()
    build_catalog(storage, path=baseline_path, materialize=(), force=True)
    baseline_build = time.perf_counter() - start
    start = time.perf_counter()
    build_catalog(storage, force=True)  # a reused workdir keeps its catalog otherwise
    tables_build = time.perf_counter() - start
    tables_path = storage.catalog_path

    con = duckdb.connect(str(tables_path), read_only=True)
    row = con.execute(
        f"SELECT pair_id FROM {tables.PAIRS.name} WHERE status = 'ok' ORDER BY hash(pair_id) LIMIT 1 OFFSET 7"
    ).fetchone()
    con.close()
    assert row is not None
    sqls = queries(row[0])

    baseline = time_queries(baseline_path, sqls, args.repeats)
    ours = time_queries(tables_path, sqls, args.repeats)

    def mb(path: Path) -> float:
        return path.stat().st_size / 2**20

    print(
        f"catalog build: baseline (views) {baseline_build:.1f} s, {mb(baseline_path):.1f} MiB; "
        f"tables {tables_build:.1f} s, {mb(tables_path):.0f} MiB"
    )
    for mode, label in (("open", "open read-only connection"), ("connect", "fresh connection per query")):
        print(f"\nmedian of {args.repeats}, ms ({label}):")
        print(f"  {'query':<24}{'rows':>6}{'views (baseline)':>18}{'tables':>10}{'speed-up':>10}")
        for name in sqls:
            b, o = baseline[name], ours[name]
            assert b["rows"] == o["rows"], (name, b["rows"], o["rows"])
            print(f"  {name:<24}{int(o['rows']):>6}{b[mode]:>18.1f}{o[mode]:>10.1f}{b[mode] / o[mode]:>9.1f}x")
        worst = max(ours[name][mode] for name in sqls)
        print(f"  slowest query on the tables: {worst:.1f} ms (target: < 100 ms)")
        if mode == "connect":
            print(
                f"  (of which duckdb.connect alone, median over all queries: views {baseline['']['open_file']:.1f} ms, "
                f"tables {ours['']['open_file']:.1f} ms)"
            )


if __name__ == "__main__":
    main()

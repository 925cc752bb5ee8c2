"""Annotation index + candidate filtering at COCO train scale, against the naive pycocotools way.

    .venv/bin/python benchmarks/candidates_benchmark.py [--images 100000 --instances 800000 \
        --baseline-instances 20000 --workdir /tmp/pbi-candidates-bench]

1. Generates (seeded, streamed to disk) a COCO instances file: `--images` images of ~640x480,
   `--instances` instances, star-shaped polygons of 10-40 vertices whose areas are log-uniform
   between 0.05 % and 50 % of the image, 3 % two-part instances, 1 % crowd regions as uncompressed
   RLE. Categories come last in the file, as in COCO's own files. Reused when already present.
2. ours: `read_source_index` (streamed ijson + pycocotools RLE area/bbox, no mask decoded) +
   `pbi_ml.candidates.filter_candidates(..., CandidateConfig(check_images=False))`.
3. baseline: pycocotools `COCO(path)` (json.load of the whole file) + `annToMask` on every
   instance and the area fraction and box from the decoded mask. With `--baseline-instances N`
   only the first N instances are decoded and the per-instance rate is extrapolated (printed as
   such); 0 decodes all.

Each measurement runs in its own subprocess so that its peak RSS (ru_maxrss) is its own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZES = [(640, 480), (640, 427), (480, 640), (640, 360), (500, 375), (612, 612), (427, 640), (640, 512)]
NUM_CATEGORIES = 80


# --------------------------------------------------------------------------------------------
# the synthetic COCO file


def generate(path: Path, num_images: int, num_instances: int, seed: int) -> None:
    """Write the annotation file in one streaming pass (a few MB of Python objects at a time)."""
    rng = np.random.default_rng(seed)
    sizes = np.array(IMAGE_SIZES)[rng.integers(0, len(IMAGE_SIZES), num_images)]
    image_of = np.sort(rng.integers(0, num_images, num_instances))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        f.write('{"info": {"description": "synthetic COCO-scale benchmark file", "version": "1.0"}, "licenses": [], ')
        f.write('"images": [')
        for start in range(0, num_images, 50_000):
            stop = min(num_images, start + 50_000)
            f.write(
                ("," if start else "")
                + ",".join(
                    f'{{"id": {i + 1}, "file_name": "{i + 1:012d}.jpg", "width": {int(sizes[i, 0])}, "height": {int(sizes[i, 1])}, "license": 1}}'
                    for i in range(start, stop)
                )
            )
        f.write('], "annotations": [')
        chunk = 20_000
        for start in range(0, num_instances, chunk):
            stop = min(num_instances, start + chunk)
            parts = []
            for k in range(start, stop):
                image = int(image_of[k])
                width, height = (int(v) for v in sizes[image])
                parts.append(_annotation(rng, k + 1, image + 1, width, height))
            f.write(("," if start else "") + ",".join(parts))
        f.write('], "categories": [')
        f.write(
            ",".join(
                f'{{"id": {c + 1}, "name": "class {c + 1}", "supercategory": "thing"}}' for c in range(NUM_CATEGORIES)
            )
        )
        f.write("]}")
    os.replace(tmp, path)


def _polygon(rng, width: int, height: int, fraction: float) -> list[float]:
    n = int(rng.integers(10, 41))
    radius = np.sqrt(fraction * width * height / np.pi)
    cx = rng.uniform(0.1, 0.9) * width
    cy = rng.uniform(0.1, 0.9) * height
    angles = np.sort(rng.uniform(0, 2 * np.pi, n))
    radii = radius * rng.uniform(0.7, 1.0, n)
    xs = np.clip(cx + radii * np.cos(angles), 0, width - 1)
    ys = np.clip(cy + radii * np.sin(angles), 0, height - 1)
    return np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()


def _annotation(rng, ann_id: int, image_id: int, width: int, height: int) -> str:
    fraction = float(np.exp(rng.uniform(np.log(0.0005), np.log(0.5))))
    category = int(rng.integers(1, NUM_CATEGORIES + 1))
    kind = rng.random()
    if kind < 0.01:  # crowd region: an uncompressed RLE of a box, as COCO stores crowds
        w = max(1, int(width * min(0.9, np.sqrt(fraction) * 1.5)))
        h = max(1, int(height * min(0.9, np.sqrt(fraction))))
        x0, y0 = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
        counts = [x0 * height + y0] + [h, height - h] * (w - 1) + [h, (width - x0 - w) * height + height - y0 - h]
        segmentation = json.dumps({"size": [height, width], "counts": counts})
        bbox = [x0, y0, w, h]
        iscrowd = 1
    else:
        polygons = [_polygon(rng, width, height, fraction)]
        if kind > 0.97:
            polygons.append(_polygon(rng, width, height, fraction / 3))
        segmentation = json.dumps(polygons)
        xs = [v for p in polygons for v in p[0::2]]
        ys = [v for p in polygons for v in p[1::2]]
        bbox = [min(xs), min(ys), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)]
        iscrowd = 0
    return (
        f'{{"id": {ann_id}, "image_id": {image_id}, "category_id": {category}, "segmentation": {segmentation}, '
        f'"area": {round(fraction * width * height, 2)}, "bbox": {json.dumps(bbox)}, "iscrowd": {iscrowd}}}'
    )


# --------------------------------------------------------------------------------------------
# the two measured runs (each in its own process)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_ours(path: Path, num_shards: int) -> dict:
    sys.path.insert(0, str(ROOT))
    import pyarrow.compute as pc

    from pbi_ml.config import CandidateConfig, SourceConfig
    from pbi_ml.sources import read_source_index

    source = SourceConfig(name="bench", format="coco", images=str(path.parent / "images"), annotations=str(path))
    baseline_rss = peak_rss_mb()
    start = time.perf_counter()
    index = read_source_index(source, num_shards)
    t_index = time.perf_counter() - start
    result = {
        "instances": index.num_rows,
        "index_seconds": t_index,
        "index_bytes": index.nbytes,
        "rss_after_imports_mb": baseline_rss,
    }
    try:
        from pbi_ml.candidates import filter_candidates
    except ImportError as exc:
        result["candidates"] = f"not measured: {exc}"
        result["total_seconds"] = t_index
    else:
        start = time.perf_counter()
        candidates = filter_candidates(index, source, CandidateConfig(check_images=False))
        t_filter = time.perf_counter() - start
        result["filter_seconds"] = t_filter
        result["kept"] = int(pc.sum(candidates.column("kept")).as_py())
        result["total_seconds"] = t_index + t_filter
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def run_baseline(path: Path, limit: int, config_min: float, config_max: float) -> dict:
    """The naive way: COCO() + annToMask per instance, the same filters on the decoded mask."""
    from pycocotools.coco import COCO

    from pbi_ml.config import CandidateConfig

    BORDER_MARGIN = CandidateConfig().border_margin_fraction  # noqa: N806 - same rule as ours

    start = time.perf_counter()
    coco = COCO(str(path))
    t_load = time.perf_counter() - start
    ann_ids = sorted(coco.anns)
    todo = ann_ids if limit <= 0 else ann_ids[:limit]
    kept = 0
    start = time.perf_counter()
    for ann_id in todo:
        ann = coco.anns[ann_id]
        image = coco.imgs[ann["image_id"]]
        mask = coco.annToMask(ann)
        fraction = mask.sum() / (image["width"] * image["height"])
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        mx, my = BORDER_MARGIN * image["width"], BORDER_MARGIN * image["height"]
        inside = len(xs) and xs[0] >= mx and ys[0] >= my
        inside = inside and xs[-1] + 1 <= image["width"] - mx and ys[-1] + 1 <= image["height"] - my
        if inside and not ann["iscrowd"] and config_min <= fraction <= config_max:
            kept += 1
    t_masks = time.perf_counter() - start
    return {
        "instances_total": len(ann_ids),
        "instances_decoded": len(todo),
        "load_seconds": t_load,
        "mask_seconds": t_masks,
        "kept_in_decoded": kept,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure(kind: str, args, path: Path) -> dict:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        kind,
        "--file",
        str(path),
        "--num-shards",
        str(args.num_shards),
        "--baseline-instances",
        str(args.baseline_instances),
    ]
    out = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"{kind} run failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--instances", type=int, default=800_000)
    parser.add_argument("--baseline-instances", type=int, default=20_000, help="decode only the first N (0 = all)")
    parser.add_argument("--num-shards", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/pbi-candidates-bench")
    parser.add_argument("--measure", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure == "ours":
        print(json.dumps(run_ours(Path(args.file), args.num_shards)))
        return
    if args.measure == "baseline":
        sys.path.insert(0, str(ROOT))
        from pbi_ml.config import CandidateConfig

        config = CandidateConfig()
        print(
            json.dumps(
                run_baseline(
                    Path(args.file), args.baseline_instances, config.min_area_fraction, config.max_area_fraction
                )
            )
        )
        return

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"instances_{args.images}img_{args.instances}inst_seed{args.seed}.json"
    if path.exists():
        print(f"reusing {path}")
    else:
        start = time.perf_counter()
        generate(path, args.images, args.instances, args.seed)
        print(f"generated {path} in {time.perf_counter() - start:.1f} s")
    size_mb = path.stat().st_size / 2**20
    print(f"annotation file: {size_mb:.1f} MiB, {args.images} images, {args.instances} instances")

    ours = measure("ours", args, path)
    n = ours["instances"]
    print("\n(a) ours: read_source_index + filter_candidates(check_images=False)")
    print(
        f"    index:   {ours['index_seconds']:.1f} s  ({n / ours['index_seconds']:,.0f} instances/s), "
        f"Arrow table {ours['index_bytes'] / 2**20:.0f} MiB"
    )
    if "filter_seconds" in ours:
        print(f"    filter:  {ours['filter_seconds']:.2f} s, kept {ours['kept']:,} of {n:,}")
    else:
        print(f"    filter:  {ours['candidates']}")
    print(f"    total:   {ours['total_seconds']:.1f} s  -> {n / ours['total_seconds']:,.0f} instances/s")
    print(
        f"    peak RSS {ours['peak_rss_mb']:,.0f} MiB (after imports {ours['rss_after_imports_mb']:,.0f} MiB; "
        f"JSON file {size_mb:,.0f} MiB)"
    )

    base = measure("baseline", args, path)
    total = base["instances_total"]
    rate = base["instances_decoded"] / base["mask_seconds"]
    estimate = base["load_seconds"] + total / rate
    extrapolated = base["instances_decoded"] < total
    print("\n(b) baseline: pycocotools COCO(path) + annToMask on every instance")
    print(f"    COCO(path) load: {base['load_seconds']:.1f} s")
    print(
        f"    annToMask + area fraction: {base['instances_decoded']:,} instances in {base['mask_seconds']:.1f} s "
        f"({rate:,.0f} instances/s)"
    )
    label = "EXTRAPOLATED total" if extrapolated else "total"
    print(f"    {label} for {total:,} instances: {estimate:.1f} s -> {total / estimate:,.0f} instances/s")
    print(f"    peak RSS {base['peak_rss_mb']:,.0f} MiB")

    print(
        f"\nspeed-up (ours vs baseline{' extrapolated' if extrapolated else ''}): "
        f"{estimate / ours['total_seconds']:.1f}x; peak memory ours/baseline: "
        f"{ours['peak_rss_mb']:,.0f} / {base['peak_rss_mb']:,.0f} MiB"
    )


if __name__ == "__main__":
    main()

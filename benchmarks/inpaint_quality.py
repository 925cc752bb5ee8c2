"""Inpainting quality on real photos: which weight-free CPU inpainter should the `opencv` backend use?

    .venv/bin/python benchmarks/inpaint_quality.py            # all sets, up to --per-set cases each
    .venv/bin/python benchmarks/inpaint_quality.py --quick    # a few cases per set, short time cap
    pip install --target /tmp/ocv-contrib opencv-contrib-python-headless --no-deps   # cv2.xphoto, beside the venv
    PYTHONPATH=/tmp/ocv-contrib:$PWD .venv/bin/python benchmarks/inpaint_quality.py --data ../shared/data
    .venv/bin/python benchmarks/inpaint_quality.py --sd-model stable-diffusion-v1-5/stable-diffusion-inpainting \
        --device cuda                                         # plus the diffusers backend's first candidate

The standard protocol: an object-shaped hole is put on a region with no object, inpainted, and the
result compared with the original pixels under the hole.

Cases (image, hole):
- `skimage`: scikit-image's bundled photos (longer side 640 px) with synthetic object shapes
  (ellipses, rectangles, triangles from skimage.draw.random_shapes), always available.
- `coco128seg_50`, `labelme_voc` (when ../shared/data holds them): each annotated instance's mask
  (decoded with pycocotools) is shifted onto another photo of the same set, at a seeded random place
  where the dilated hole's box overlaps no annotated instance's box there, so what lies under the hole
  is real background.
Every hole is dilated by RemovalConfig's dilation_px (15), as the removal stage dilates its masks,
and must cover 0.2 %-15 % of the photo.

Each method inpaints the padded crop around the hole the `opencv` backend inpaints
(pbi_ml.removal.opencv.inpaint_crop); its time is that call's wall time, one thread
(cv2.setNumThreads(1)). Methods: the backend's own candidates (cv2.inpaint: telea and ns at radii
3, 5, 9; the first, telea r=3, is the reference `ref`), the cv2.xphoto methods (fsr_fast,
fsr_best, shiftmap; opencv-contrib only, listed as unavailable without it; their mask is inverted:
nonzero = known pixel), scikit-image's biharmonic inpainting, and with --sd-model the `diffusers`
removal backend (its defaults, one candidate, on the whole photo: it takes its own window). A method whose total time passes
--time-cap seconds stops there; its row is then over fewer cases.

Metrics, over the hole's pixels only (the rest of the image is the original by construction):
- L1: mean absolute difference, 0-255 scale, over the hole's pixels and the 3 channels;
- PSNR: skimage.metrics.peak_signal_noise_ratio on the hole's pixels (data range 255; inf when exact);
- SSIM: skimage.metrics.structural_similarity (7x7 window, per channel, data range 255) on the hole's
  bounding box grown by 3 px (half a window), its SSIM map averaged over the hole's pixels only.
The table gives the mean of each over a method's cases (PSNR: the mean of finite values), ms per
image (median), and ratios against the reference on the same cases, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHARED_DATA = ROOT.parent / "shared" / "data"
ANNOTATED_SETS = ("coco128seg_50", "labelme_voc")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")  # the bundled colour photographs (no download)
LONG_SIDE = 640
HOLE_FRACTION = (0.002, 0.15)  # of the photo, after dilation
SSIM_WINDOW = 7


@dataclass
class Case:
    set: str
    name: str
    image: np.ndarray  # HxWx3 uint8 RGB
    hole: np.ndarray  # HxW bool, dilated


def masked_metrics(original: np.ndarray, inpainted: np.ndarray, hole: np.ndarray) -> tuple[float, float, float]:
    """(L1, PSNR, SSIM) of `inpainted` against `original` inside `hole` (module docstring)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from pbi_ml.masks import bbox_of

    inside_true, inside_out = original[hole].astype(np.float64), inpainted[hole].astype(np.float64)
    l1 = float(np.abs(inside_true - inside_out).mean())
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(inside_true, inside_out, data_range=255))
    x, y, w, h = bbox_of(hole)
    grow = SSIM_WINDOW // 2
    y0, y1 = max(0, y - grow), min(hole.shape[0], y + h + grow)
    x0, x1 = max(0, x - grow), min(hole.shape[1], x + w + grow)
    ssim_map = structural_similarity(
        original[y0:y1, x0:x1],
        inpainted[y0:y1, x0:x1],
        win_size=SSIM_WINDOW,
        channel_axis=2,
        data_range=255,
        full=True,
    )[-1]  # (mean SSIM, SSIM map)
    ssim = float(ssim_map[hole[y0:y1, x0:x1]].mean())
    return l1, psnr, ssim


def fits(hole: np.ndarray) -> bool:
    return HOLE_FRACTION[0] <= hole.mean() <= HOLE_FRACTION[1]


def resized(image: np.ndarray, long_side: int) -> np.ndarray:
    import cv2

    h, w = image.shape[:2]
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.ascontiguousarray(cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC))


def skimage_cases(count: int, dilation_px: int) -> list[Case]:
    """Synthetic object shapes on scikit-image's photos, one shape per case."""
    import skimage.data
    from skimage.draw import random_shapes

    from pbi_ml.masks import dilate

    cases = []
    rng = np.random.default_rng(0)
    attempt = 0
    while len(cases) < count and attempt < 50 * count:
        name = PHOTOS[len(cases) % len(PHOTOS)]
        image = resized(getattr(skimage.data, name)()[..., :3], LONG_SIDE)
        h, w = image.shape[:2]
        labels, _ = random_shapes(
            (h, w),
            max_shapes=1,
            min_size=h // 12,
            max_size=h // 4,
            shape=("circle", "rectangle", "triangle", "ellipse")[attempt % 4],
            num_channels=1,
            intensity_range=(0, 0),
            rng=int(rng.integers(1 << 31)),
        )
        attempt += 1
        hole = dilate(labels[..., 0] == 0, dilation_px)  # the shape is black on white
        if fits(hole):
            cases.append(Case("skimage", f"{name}#{attempt}", image, hole))
    return cases


def annotated_cases(set_dir: Path, count: int, dilation_px: int, seed: int = 0) -> list[Case]:
    """Instance masks of `set_dir` shifted onto object-free regions of the set's other photos."""
    from PIL import Image
    from pycocotools import mask as mask_utils

    from pbi_ml.masks import bbox_of, dilate

    coco = json.loads((set_dir / "annotations.json").read_text())
    images = {im["id"]: im for im in coco["images"] if (set_dir / "images" / im["file_name"]).exists()}
    boxes: dict[int, list] = {i: [] for i in images}
    for ann in coco["annotations"]:
        if ann["image_id"] in boxes:
            boxes[ann["image_id"]].append(ann["bbox"])
    rng = np.random.default_rng(seed)
    photo_ids = sorted(images)
    cases: list[Case] = []
    for ann in sorted(coco["annotations"], key=lambda a: a["id"]):
        if len(cases) >= count or len(photo_ids) < 2 or ann["image_id"] not in images or ann.get("iscrowd"):
            continue
        source = images[ann["image_id"]]
        seg = ann["segmentation"]
        rle = mask_utils.frPyObjects(seg, source["height"], source["width"])
        shape = mask_utils.decode(mask_utils.merge(rle) if isinstance(rle, list) else rle).astype(bool)
        x, y, w, h = bbox_of(shape)
        shape = shape[y : y + h, x : x + w]
        for target_id in rng.permutation([i for i in photo_ids if i != ann["image_id"]])[:5]:
            target = images[int(target_id)]
            th, tw = target["height"], target["width"]
            grow = dilation_px + 1
            if h + 2 * grow >= th or w + 2 * grow >= tw:
                continue
            placed = _free_place(rng, (th, tw), (h, w), grow, boxes[int(target_id)])
            if placed is None:
                continue
            px, py = placed
            hole = np.zeros((th, tw), bool)
            hole[py : py + h, px : px + w] = shape
            hole = dilate(hole, dilation_px)
            if not fits(hole):
                break  # the shape's size does not depend on the photo much: next instance
            image = np.asarray(Image.open(set_dir / "images" / target["file_name"]).convert("RGB"))
            cases.append(Case(set_dir.name, f"ann{ann['id']}->{target['file_name']}", image, hole))
            break
    return cases


def _free_place(rng, size: tuple[int, int], shape: tuple[int, int], grow: int, boxes: list, tries: int = 200):
    """A top-left (x, y) where the shape's box grown by `grow` lies inside the photo and overlaps no box."""
    (th, tw), (h, w) = size, shape
    for _ in range(tries):
        x, y = int(rng.integers(grow, tw - w - grow)), int(rng.integers(grow, th - h - grow))
        x0, y0, x1, y1 = x - grow, y - grow, x + w + grow, y + h + grow
        if all(x1 <= bx or bx + bw <= x0 or y1 <= by or by + bh <= y0 for bx, by, bw, bh in boxes):
            return x, y
    return None


# cv2.xphoto (opencv-contrib only): FSR (frequency-selective reconstruction), ShiftMap (patch shifts)
XPHOTO_METHODS = {"fsr_fast": "INPAINT_FSR_FAST", "fsr_best": "INPAINT_FSR_BEST", "shiftmap": "INPAINT_SHIFTMAP"}


def xphoto_inpaint(image: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
    """`image` (RGB) with `hole` filled by cv2.xphoto.inpaint's `method`; every other pixel is the original."""
    import cv2

    xphoto = cv2.xphoto  # pyright: ignore[reportAttributeAccessIssue]  (opencv-contrib only)
    # ShiftMap wants an intensity-first colour space (Lab); FSR takes BGR
    to_space, from_space = (
        (cv2.COLOR_RGB2LAB, cv2.COLOR_LAB2RGB) if method == "shiftmap" else (cv2.COLOR_RGB2BGR, cv2.COLOR_BGR2RGB)
    )
    src = cv2.cvtColor(image, to_space)
    known = np.where(hole, 0, 255).astype(np.uint8)  # xphoto's mask is inverted: nonzero = known pixel
    filled = np.zeros_like(src)
    xphoto.inpaint(src, known, filled, getattr(xphoto, XPHOTO_METHODS[method]))
    return np.where(hole[..., None], cv2.cvtColor(filled, from_space), image)


def biharmonic_inpaint(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    out = inpaint_biharmonic(image.astype(np.float64) / 255, hole, channel_axis=-1)
    return np.where(hole[..., None], np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), image)


SD_METHOD = "sd"  # the diffusers backend, with --sd-model


def sd_inpainter(model: str, device: str, **settings) -> Callable:
    """The `diffusers` removal backend's first candidate (RemovalConfig's defaults: 10 steps, 512 px,
    crop window; `settings` override them)."""
    from pbi_ml.config import RemovalConfig
    from pbi_ml.removal import make_inpainter

    config = RemovalConfig(backend="diffusers", model=model, num_candidates=1, device=device, **settings)
    inpainter = make_inpainter(config)
    return lambda image, hole: inpainter.inpaint([image], [hole], ["object"])[0][0]


def methods(sd_model: str | None = None, device: str = "auto") -> dict[str, tuple[Callable | None, str]]:
    """name -> (inpaint(crop, hole) -> crop, or None when unavailable; a note). The first is the
    reference: the `opencv` backend's first candidate."""
    import cv2

    from pbi_ml.removal.opencv import OPENCV_CANDIDATES

    flags = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}
    table: dict[str, tuple[Callable | None, str]] = {}
    for method, radius in dict.fromkeys(OPENCV_CANDIDATES):  # the backend's candidates, in its order
        table[f"{method} r={radius}"] = (
            lambda im, m, flag=flags[method], radius=radius: cv2.inpaint(im, m.astype(np.uint8), radius, flag),
            "cv2.inpaint",
        )
    for method in XPHOTO_METHODS:
        if hasattr(cv2, "xphoto"):
            table[method] = (lambda im, m, method=method: xphoto_inpaint(im, m, method), "cv2.xphoto.inpaint")
        else:
            table[method] = (None, "unavailable: cv2.xphoto ships in opencv-contrib-python(-headless) only")
    try:
        import skimage.restoration  # noqa: F401

        table["biharmonic"] = (biharmonic_inpaint, "skimage.restoration.inpaint_biharmonic")
    except ImportError:
        table["biharmonic"] = (None, "unavailable: scikit-image not installed")
    if sd_model:
        table[SD_METHOD] = (sd_inpainter(sd_model, device), f"diffusers backend, {sd_model}")
    return table


def run(cases: list[Case], table: dict[str, tuple[Callable | None, str]], time_cap: float) -> dict[str, list]:
    """name -> per case (index, L1, PSNR, SSIM, seconds); cases past the time cap are absent. The
    diffusers backend gets the whole photo (it takes its own window); one untimed warm-up call first."""
    from pbi_ml.removal.opencv import OPENCV_CANDIDATES, inpaint_crop

    radius = max(r for _, r in OPENCV_CANDIDATES)
    results: dict[str, list] = {}
    for name, (inpaint, _) in table.items():
        if inpaint is None:
            continue
        if name == SD_METHOD:
            inpaint(cases[0].image, cases[0].hole)  # model loading
        rows, spent = [], 0.0
        for index, case in enumerate(cases):
            if spent > time_cap:
                break
            h, w = case.hole.shape
            x0, y0, x1, y1 = (0, 0, w, h) if name == SD_METHOD else inpaint_crop(case.hole, radius)
            crop, hole = np.ascontiguousarray(case.image[y0:y1, x0:x1]), case.hole[y0:y1, x0:x1]
            start = time.perf_counter()
            filled = inpaint(crop, hole)
            seconds = time.perf_counter() - start
            spent += seconds
            out = case.image.copy()
            out[y0:y1, x0:x1] = filled
            rows.append((index, *masked_metrics(case.image, out, case.hole), seconds))
        results[name] = rows
        print(f"  {name}: {len(rows)} cases, {spent:.1f} s", file=sys.stderr)
    return results


def results_table(results: dict[str, list], table: dict[str, tuple[Callable | None, str]], n_cases: int) -> str:
    reference = next(iter(table))
    by_case = {row[0]: row for row in results[reference]}
    lines = [
        "| method | n | L1 ↓ | PSNR ↑ | SSIM in-mask ↑ | ms/image | L1 / ref | PSNR − ref | SSIM / ref | time / ref |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (inpaint, note) in table.items():
        rows = results.get(name)
        if inpaint is None or not rows:
            lines.append(f"| {name} | 0 | – | – | – | – | – | – | – | – ({note}) |")
            continue
        arr = np.array([row[1:] for row in rows])
        ref = np.array([by_case[row[0]][1:] for row in rows])
        l1, psnr, ssim, ms = arr[:, 0].mean(), _finite_mean(arr[:, 1]), arr[:, 2].mean(), np.median(arr[:, 3]) * 1e3
        r_l1, r_psnr, r_ssim = ref[:, 0].mean(), _finite_mean(ref[:, 1]), ref[:, 2].mean()
        r_ms = np.median(ref[:, 3]) * 1e3
        capped = "" if len(rows) == n_cases else " (time cap)"
        lines.append(
            f"| {name} | {len(rows)}{capped} | {l1:.2f} | {psnr:.2f} | {ssim:.3f} | {ms:.1f} | "
            f"{l1 / r_l1:.2f} | {psnr - r_psnr:+.2f} dB | {ssim / r_ssim:.2f} | {ms / r_ms:.1f}x |"
        )
    return "\n".join(lines)


def interleaved(cases: list[Case]) -> list[Case]:
    """The cases one set after another in turn: a, b, c, a, b, c, ..."""
    by_set: dict[str, list[Case]] = {}
    for case in cases:
        by_set.setdefault(case.set, []).append(case)
    rounds = max((len(v) for v in by_set.values()), default=0)
    return [group[i] for i in range(rounds) for group in by_set.values() if i < len(group)]


def _finite_mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("inf")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-set", type=int, default=30, help="cases per set")
    parser.add_argument("--time-cap", type=float, default=120.0, help="seconds per method, all cases together")
    parser.add_argument("--quick", action="store_true", help="4 cases per set, 20 s per method")
    parser.add_argument("--sd-model", help="also the diffusers backend with this model (Hub id or local dir)")
    parser.add_argument("--device", default="auto", help="the diffusers backend's device")
    parser.add_argument("--data", type=Path, default=SHARED_DATA, help="folder with the annotated sets")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_set, args.time_cap = 4, 20.0
    import cv2

    from pbi_ml.config import RemovalConfig

    cv2.setNumThreads(1)
    dilation = RemovalConfig().dilation_px
    cases = skimage_cases(args.per_set, dilation)
    for set_name in ANNOTATED_SETS:
        if (args.data / set_name / "annotations.json").exists():
            cases += annotated_cases(args.data / set_name, args.per_set, dilation)
        else:
            print(f"{set_name}: not found under {args.data}, skipped", file=sys.stderr)
    cases = interleaved(cases)  # so a method stopped by the time cap has cases of every set
    counts = {s: sum(c.set == s for c in cases) for s in dict.fromkeys(c.set for c in cases)}
    holes = np.array([c.hole.mean() for c in cases])
    print(
        f"{len(cases)} cases ({', '.join(f'{s}: {n}' for s, n in counts.items())}); hole {holes.min():.1%}-"
        f"{holes.max():.1%} of the photo (median {np.median(holes):.1%}), dilated {dilation} px; cv2 {cv2.__version__}"
        f"{' with xphoto' if hasattr(cv2, 'xphoto') else ''}; {os.cpu_count()} CPUs, one thread"
    )
    table = methods(args.sd_model, args.device)
    print(results_table(run(cases, table, args.time_cap), table, len(cases)))


if __name__ == "__main__":
    main()

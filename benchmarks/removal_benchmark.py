"""Object removal throughput: the OpenCV default and the diffusers SD-inpainting backend.

    .venv/bin/python benchmarks/removal_benchmark.py                       # CPU: opencv + tiny SD
    .venv/bin/python benchmarks/removal_benchmark.py --model stable-diffusion-v1-5/stable-diffusion-inpainting \
        --device cuda --batch-size 16 --objects 64                         # GPU: the paper's recipe

Objects are real scikit-image photos resized so the longer side is 512 px, each with one
elliptical object mask (about 8 % of the image) dilated by 15 px, K = 3 candidates.

1. opencv (the embedded default): objects/s through `make_inpainter(RemovalConfig())`, best of
   `--repeats` passes; plus one large photo (2048 px) inpainted through the backend's padded crop
   and, for comparison, with cv2.inpaint on the whole image.
2. diffusers: with `--model` (a Hub id or a local directory) the real pipeline at
   `--resolution` (512), `--steps` (10), on `--device`; without it a tiny random pipeline built
   in a temp folder at 64 px, which only exercises the code: its numbers are NOT meaningful.
   Prints objects/s and UNet image-steps/s (objects x K x steps / s; the reference figure: ~76
   image-steps/s, ~2.5 objects/s, for SD 1.5 inpainting on one A100 at batch 16 with
   torch.compile) after one untimed warm-up call (model loading, first-call overheads). Objects are ordered by image
   size, as a caller should order them: pipeline batches hold one working size, so mixed sizes
   make partial batches.
Ratios are against the opencv objects/s measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

A100_ANCHOR_IMAGE_STEPS_PER_S = 76.0
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "retina")


def photo_objects(count: int, long_side: int, axes: tuple[float, float] = (0.18, 0.14), dilation_px: int = 15):
    """`count` (image, dilated mask, category) items from scikit-image photos, longer side `long_side`;
    the object is an ellipse with half-axes `axes` (fractions of width, height): ~8 % of the image."""
    import cv2
    import skimage.data

    from pbi_ml.masks import dilate

    items = []
    for i in range(count):
        name = PHOTOS[i % len(PHOTOS)]
        image = getattr(skimage.data, name)()[..., :3]
        h, w = image.shape[:2]
        scale = long_side / max(h, w)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
        h, w = image.shape[:2]
        # one object per item, placed differently for repeated photos
        rng = np.random.default_rng(i)
        cx, cy = int(w * rng.uniform(0.35, 0.65)), int(h * rng.uniform(0.35, 0.65))
        mask = np.zeros((h, w), np.uint8)
        cv2.ellipse(mask, (cx, cy), (int(axes[0] * w), int(axes[1] * h)), 0, 0, 360, 1, thickness=-1)
        items.append((np.ascontiguousarray(image), dilate(mask > 0, dilation_px), name))
    return items


def time_inpainter(inpainter, items, batch_size: int, repeats: int) -> float:
    """Best wall time over `repeats` passes of all items, `batch_size` objects per inpaint call."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for b in range(0, len(items), batch_size):
            batch = items[b : b + batch_size]
            inpainter.inpaint([i for i, _, _ in batch], [m for _, m, _ in batch], [c for _, _, c in batch])
        best = min(best, time.perf_counter() - start)
    return best


def bench_opencv(args) -> float:
    import cv2

    from pbi_ml.config import RemovalConfig
    from pbi_ml.removal import make_inpainter

    config = RemovalConfig(num_candidates=args.candidates)
    inpainter = make_inpainter(config)
    items = photo_objects(args.opencv_objects, 512)
    seconds = time_inpainter(inpainter, items, config.batch_size, args.repeats)
    rate = len(items) / seconds
    print(f"opencv  {len(items)} objects at 512 px, K={args.candidates} ({', '.join(inpainter.candidate_labels())})")
    print(f"        {seconds:.2f} s  ->  {rate:.2f} objects/s  ({rate * args.candidates:.2f} candidate images/s)")

    big_image, big_mask, _ = photo_objects(1, 2048, axes=(0.05, 0.04))[0]  # a small object (~0.6 %) on a big photo
    start = time.perf_counter()
    inpainter.inpaint([big_image], [big_mask], ["object"])
    crop_s = time.perf_counter() - start
    start = time.perf_counter()
    for method, radius in inpainter.candidates:
        cv2.inpaint(
            big_image, big_mask.astype(np.uint8), radius, cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        )
    whole_s = time.perf_counter() - start
    print(
        f"        one {big_image.shape[1]}x{big_image.shape[0]} photo, object {big_mask.mean():.1%} of it (dilated): "
        f"padded crop {crop_s:.3f} s vs whole-image cv2.inpaint {whole_s:.3f} s"
    )
    return rate


def bench_diffusers(args, opencv_rate: float) -> None:
    from pbi_ml.config import RemovalConfig
    from pbi_ml.devices import resolve_device
    from pbi_ml.removal import make_inpainter

    meaningful = args.model is not None
    if meaningful:
        model, resolution = args.model, args.resolution
    else:
        from pbi_ml.tiny_sd import save_tiny_inpaint_pipeline

        model = str(save_tiny_inpaint_pipeline(Path(tempfile.mkdtemp(prefix="pbi-removal-bench-")) / "tiny-sd"))
        resolution = args.tiny_resolution
    objects = args.objects if args.objects else (64 if meaningful else 4)
    config = RemovalConfig(
        backend="diffusers",
        model=model,
        num_candidates=args.candidates,
        steps=args.steps,
        resolution=resolution,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
    )
    inpainter = make_inpainter(config)
    # ordered by image size, as a caller should: pipeline batches are per working size
    items = sorted(photo_objects(objects, 512), key=lambda item: item[0].shape)
    per_call = max(1, args.batch_size // args.candidates)  # objects per inpaint call ~ one pipeline batch
    start = time.perf_counter()
    warm = items[:1]
    inpainter.inpaint([i for i, _, _ in warm], [m for _, m, _ in warm], [c for _, _, c in warm])
    warm_s = time.perf_counter() - start
    calls_before = inpainter.pipeline_calls
    seconds = time_inpainter(inpainter, items, per_call, 1)
    calls = inpainter.pipeline_calls - calls_before
    rate = len(items) / seconds
    image_steps = len(items) * args.candidates * args.steps / seconds
    device = resolve_device(args.device)
    print(f"diffusers  model={model if meaningful else 'tiny random pipeline (save_tiny_inpaint_pipeline)'}")
    print(
        f"        device={device} dtype={args.dtype} resolution={resolution} steps={args.steps} K={args.candidates} "
        f"batch_size={args.batch_size} images/pipeline call; warm-up (load + first call) {warm_s:.1f} s"
    )
    print(
        f"        {len(items)} objects in {seconds:.2f} s  ->  {rate:.3f} objects/s, {image_steps:.1f} UNet image-steps/s "
        f"({calls} pipeline calls)"
    )
    print(f"        vs opencv: {rate / opencv_rate:.4f}x the objects/s ({opencv_rate / rate:.1f}x slower)")
    print(
        f"        vs the A100 anchor (docs/method.md#speed-anchors; batch 16, torch.compile): {image_steps / A100_ANCHOR_IMAGE_STEPS_PER_S:.3f}x of {A100_ANCHOR_IMAGE_STEPS_PER_S:.0f} image-steps/s"
    )
    if not meaningful:
        print(
            "        NOTE: tiny random pipeline on CPU: these diffusers numbers exercise the code path only and are NOT meaningful."
        )
    elif not device.startswith("cuda"):
        print("        NOTE: not on a CUDA GPU: not comparable with the A100 anchor.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--model", help="diffusers inpainting pipeline: Hub id or local directory (default: tiny random, CPU)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--candidates", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--tiny-resolution", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=12, help="images per pipeline call (the A100 anchor's: 16)")
    parser.add_argument("--objects", type=int, default=0, help="diffusers objects (default 64 real / 4 tiny)")
    parser.add_argument("--opencv-objects", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--opencv-only", action="store_true")
    args = parser.parse_args()
    if args.model is None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    opencv_rate = bench_opencv(args)
    if not args.opencv_only:
        bench_diffusers(args, opencv_rate)


if __name__ == "__main__":
    main()

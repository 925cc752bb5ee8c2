"""Full-size GPU throughput through PBI's own code paths, with random weights (no download).

    .venv/bin/python benchmarks/gpu_throughput.py            # CUDA: the real architectures
    .venv/bin/python benchmarks/gpu_throughput.py --tiny     # CPU: the same code at tiny sizes (< 3 min)

The models are built from their published configs, written out below, with random weights:
SD 1.5 inpainting's UNet (9 input channels), its VAE and its CLIP text encoder; SD 1.5's
text-to-image UNet for training (widened to 8 channels by our trainer); CLIP ViT-L/14 for
scoring. Random weights cost the same FLOPs as the real ones, so the speeds are the real models'.

(a) removal: `DiffusersInpainter` (pbi_ml/removal/sd_inpaint.py) on real scikit-image photos
    (640 x 480, one object of 0.4 % of the image, COCO's median, dilated 15 px; K = 3, 10 steps)
    at batch 8 / 16 / 32, fp16 and bf16, compile off and on, context crop and full. Prints UNet
    image-steps/s (objects x K x steps / s; classifier-free guidance doubles the UNet batch, as
    in the paper's anchor) and objects/s, after one untimed warm-up call per setting.
(b) training: `train_instruct_pix2pix` (pbi_ml/train/loop.py) at 256 px, latents on the fly and
    cached (the cache is filled by a first run and then read by a second, which is timed); the
    fill's cache build in pairs/s (decoding in the default DataLoader workers, encoding one crop
    per pair: crop squash).
(c) scoring: `ClipEmbedder.embed_images` (pbi_ml/clip_embedder.py), CLIP ViT-L/14, images/s.

On CUDA every figure is printed with its ratio to the reference figures (docs/method.md#speed-anchors) and
to our targets for one H100 / H200: removal >= 150 image-steps/s at batch 16 (2x the
A100 anchor of 76), training >= 300 samples/s with cached latents (the optimised-trainer
anchor: 137 per A100), CLIP >= 3,000 images/s. `--tiny` numbers mean only that the code runs.
`--quick` runs one removal setting per dtype (batch 16, compile off) to fit a short GPU lease;
training (with the cache build's pairs/s) and CLIP as in a full run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ANCHOR_REMOVAL_A100 = 76.0  # UNet image-steps/s, SD 1.5 inpainting, batch 16, torch.compile
TARGET_REMOVAL = 150.0
ANCHOR_TRAIN_ORIGINAL_A100 = 14.0  # samples/s at 256 px, original InstructPix2Pix trainer
ANCHOR_TRAIN_CACHED_A100 = 137.0  # samples/s at 256 px, pre-encoded latents
TARGET_TRAIN_CACHED = 300.0
TARGET_CLIP = 3000.0

# ---- published configs (Hugging Face model cards / config.json of the SD 1.5 repositories) ----
SD15_UNET: dict[str, Any] = dict(
    sample_size=64,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE: dict[str, Any] = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)
SD15_TEXT: dict[str, Any] = dict(  # openai/clip-vit-large-patch14's text tower
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)
CLIP_VIT_L14 = "ViT-L-14"  # open_clip's own published config (vision 1024 wide, 24 layers, patch 14, 224 px)
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 4, "layers": 2},
}


def save_pipeline(kind: str, directory: Path, tiny: bool) -> Path:
    """A StableDiffusion(Inpaint)Pipeline with random weights saved with save_pretrained."""
    import torch
    from diffusers import (  # pyright: ignore[reportPrivateImportUsage]
        AutoencoderKL,
        DDIMScheduler,
        StableDiffusionInpaintPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from pbi_ml.tiny_sd import tiny_sd_components, write_clip_tokenizer

    in_channels = 9 if kind == "inpaint" else 4
    if tiny:
        parts = tiny_sd_components(unet_in_channels=in_channels)
    else:
        torch.manual_seed(0)
        parts = {
            "unet": UNet2DConditionModel(in_channels=in_channels, **SD15_UNET),
            "vae": AutoencoderKL(**SD15_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT)),
            "tokenizer": CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(directory / "tokenizer-src"))),
            "scheduler": DDIMScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1
            ),
        }
    cls = StableDiffusionInpaintPipeline if kind == "inpaint" else StableDiffusionPipeline
    pipe = cls(**parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False)  # pyright: ignore[reportArgumentType]
    out = directory / kind
    pipe.save_pretrained(str(out), safe_serialization=True)
    return out


def photo_objects(count: int, height: int, width: int, object_fraction: float, dilation_px: int = 15):
    """(image, dilated mask, category) from scikit-image photos, one square object per photo."""
    import cv2
    import skimage.data

    from pbi_ml.masks import dilate

    photos = [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee(), skimage.data.rocket()]
    side = max(4, int(round((object_fraction * height * width) ** 0.5)))
    items = []
    for i in range(count):
        image = cv2.resize(np.ascontiguousarray(photos[i % len(photos)][..., :3]), (width, height))
        mask = np.zeros((height, width), dtype=bool)
        top, left = (height - side) * (i % 3) // 2, (width - side) * (i % 5) // 4
        mask[top : top + side, left : left + side] = True
        items.append((image, dilate(mask, dilation_px), "object"))
    return items


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bench_removal(model_dir: Path, args, device: str) -> list[dict]:
    from dataclasses import replace

    from pbi_ml.config import RemovalConfig
    from pbi_ml.removal.sd_inpaint import DiffusersInpainter

    height, width = (60, 80) if args.tiny else (480, 640)
    base = RemovalConfig(
        backend="diffusers",
        model=str(model_dir),
        steps=args.steps,
        resolution=64 if args.tiny else 512,
        min_context_px=32 if args.tiny else 384,
        device=device,
    )
    settings = []
    for dtype in args.dtypes:
        for batch in args.batches:
            for compile_ in args.compile:
                for context in args.contexts:
                    settings.append(dict(dtype=dtype, batch_size=batch, compile=compile_, context=context))
    rows = []
    for setting in settings:
        config = replace(base, **setting)
        inpainter = DiffusersInpainter(config)
        objects = max(2, -(-2 * config.batch_size // config.num_candidates))  # >= 2 full pipeline batches
        items = photo_objects(objects, height, width, object_fraction=0.004 if not args.tiny else 0.02)
        images, masks, cats = ([x[i] for x in items] for i in range(3))
        inpainter.inpaint(images[:1], masks[:1], cats[:1])  # load + warm up (+ compile)
        if not args.tiny:
            inpainter.inpaint(images, masks, cats)  # a full-batch warm-up (compile specialises on shapes)
        _sync()
        start = time.perf_counter()
        inpainter.inpaint(images, masks, cats)
        _sync()
        seconds = time.perf_counter() - start
        image_steps = objects * config.num_candidates * config.steps
        row = {
            **setting,
            "objects": objects,
            "objects_per_s": objects / seconds,
            "image_steps_per_s": image_steps / seconds,
            "compiled": inpainter.compiled,
            "contexts": sorted({inpainter.context_of(i, m) for i, m in zip(images, masks, strict=True)}),
        }
        rows.append(row)
        ratio = f"  x{row['image_steps_per_s'] / ANCHOR_REMOVAL_A100:.2f} A100 anchor" if not args.tiny else ""
        print(
            f"removal  batch {setting['batch_size']:>2} {setting['dtype']:<8} compile {str(setting['compile']):<5} "
            f"{setting['context']:<4}: {row['image_steps_per_s']:8.1f} image-steps/s {row['objects_per_s']:7.2f} "
            f"objects/s{ratio}",
            flush=True,
        )
        del inpainter
        _free_cuda()
    return rows


def _free_cuda() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def training_examples(directory: Path, count: int, size: tuple[int, int]):
    """Synthetic pairs on disk: scikit-image photos as targets, a grey square removed as sources."""
    from pbi_ml.imageio import save_png
    from pbi_ml.train import TrainingExample

    examples = []
    for i, (image, mask, _) in enumerate(photo_objects(count, size[1], size[0], object_fraction=0.05)):
        source = image.copy()
        source[mask] = 128
        src = save_png(source, directory / f"pair{i}" / "source.png")
        tgt = save_png(image, directory / f"pair{i}" / "target.png")
        examples.append(
            TrainingExample(
                source_image=str(src.path),
                target_image=str(tgt.path),
                instructions=("add an object",),
                object_location="middle",
                key=f"bench/{i:04d}",
            )
        )
    return examples


def bench_training(init_dir: Path | str, work: Path, args, device: str) -> list[dict]:
    from pbi_ml.train import train_instruct_pix2pix
    from pbi_ml.train.config import TrainConfig

    resolution = 32 if args.tiny else 256
    examples = training_examples(work / "pairs", args.train_pairs, (resolution * 5 // 4, resolution))
    rows = []
    for latents in ("on_the_fly", "cache"):
        config = TrainConfig(
            init_model=str(init_dir),
            resolution=resolution,
            crop="squash",
            train_batch_size=args.train_batch,
            gradient_accumulation_steps=1,
            num_epochs=None,
            max_steps=args.train_steps,
            checkpoint_every=10**6,
            latents=latents,
            device=device,
        )
        cache = work / "latent_cache"
        if latents == "cache":  # fill the cache (timed separately), then train from it
            fill = train_instruct_pix2pix(examples, config, work / "fill", latent_cache_dir=cache)
            rate = fill.latents_encoded / fill.latents_build_s
            rows.append({"latents": "cache build", "pairs": fill.latents_encoded, "pairs_per_s": rate})
            print(f"training latent cache build: {fill.latents_encoded} pairs, {rate:8.1f} pairs/s", flush=True)
        result = train_instruct_pix2pix(examples, config, work / f"run-{latents}", latent_cache_dir=cache)
        row = {"latents": latents, "batch": args.train_batch, "samples_per_s": result.samples_per_second}
        rows.append(row)
        anchor = ANCHOR_TRAIN_CACHED_A100 if latents == "cache" else ANCHOR_TRAIN_ORIGINAL_A100
        ratio = "" if args.tiny else f"  x{row['samples_per_s'] / anchor:.2f} A100 anchor"
        if not args.tiny and latents == "cache":
            ratio += f", x{row['samples_per_s'] / TARGET_TRAIN_CACHED:.2f} target"
        print(
            f"training {resolution} px batch {args.train_batch} latents {latents:<10}: "
            f"{row['samples_per_s']:8.1f} samples/s{ratio}",
            flush=True,
        )
        _free_cuda()
    return rows


def bench_clip(work: Path, args, device: str) -> dict:
    import skimage.data

    from pbi_ml.clip_embedder import ClipEmbedder

    if args.tiny:
        model = work / "tiny-clip.json"
        model.write_text(json.dumps(TINY_CLIP))
        name = str(model)
    else:
        name = CLIP_VIT_L14
    embedder = ClipEmbedder(name, None, device=device, batch_size=args.clip_batch).load()
    photo = np.ascontiguousarray(skimage.data.astronaut()[:, :, :3])
    images = [photo] * (args.clip_batch * (2 if args.tiny else 8))
    embedder.embed_images(images[: args.clip_batch])  # warm-up
    _sync()
    start = time.perf_counter()
    embedder.embed_images(images)
    _sync()
    rate = len(images) / (time.perf_counter() - start)
    ratio = "" if args.tiny else f"  x{rate / TARGET_CLIP:.2f} target"
    print(f"scoring  CLIP {'tiny' if args.tiny else 'ViT-L/14'} batch {args.clip_batch}: {rate:8.1f} images/s{ratio}")
    return {"clip_images_per_s": rate, "batch": args.clip_batch}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the code runs (< 3 min)")
    parser.add_argument("--quick", action="store_true", help="one removal setting per dtype (batch 16, no compile)")
    parser.add_argument("--only", choices=("removal", "training", "clip"), action="append")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--train-batch", type=int, default=None)
    parser.add_argument("--train-pairs", type=int, default=None)
    parser.add_argument("--clip-batch", type=int, default=None)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    import torch

    cuda = torch.cuda.is_available() and not args.tiny
    device = "cuda" if cuda else "cpu"
    if args.tiny:
        args.batches, args.compile, args.contexts = [2], [False], ["crop", "full"]
        args.dtypes = ["float32"]
        args.steps = 2
    elif args.quick:
        args.batches, args.compile, args.contexts = [16], [False], ["crop"]
        args.dtypes = ["float16", "bfloat16"]
    else:
        args.batches, args.compile, args.contexts = [8, 16, 32], [False, True], ["crop", "full"]
        args.dtypes = ["float16", "bfloat16"]
    args.train_steps = args.train_steps or (3 if args.tiny else 20)
    args.train_batch = args.train_batch or (2 if args.tiny else 64)
    args.train_pairs = args.train_pairs or (4 if args.tiny else 256)
    args.clip_batch = args.clip_batch or (8 if args.tiny else 256)
    if not args.tiny and not cuda:
        print("no CUDA device: full-size models on a CPU take hours; run with --tiny")
        return 2
    what = args.only or ["removal", "training", "clip"]
    gpu = torch.cuda.get_device_name(0) if cuda else "cpu"
    print(f"gpu_throughput: {gpu}, torch {torch.__version__}, {'tiny' if args.tiny else 'full-size'} models")
    figures: dict = {"device": gpu, "tiny": args.tiny}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pbi-gpu-bench-") as tmp:
        work = Path(tmp)
        if "removal" in what:
            figures["removal"] = bench_removal(save_pipeline("inpaint", work, args.tiny), args, device)
        if "training" in what:
            init = "tiny" if args.tiny else save_pipeline("text2image", work, tiny=False)
            figures["training"] = bench_training(init, work / "train", args, device)
        if "clip" in what:
            figures["clip"] = bench_clip(work, args, device)
    figures["seconds"] = time.perf_counter() - started
    print(f"done in {figures['seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training-step throughput of the InstructPix2Pix trainer (samples per second).

    python benchmarks/train_benchmark.py                                   # tiny model, CPU, 32 px
    python benchmarks/train_benchmark.py --init-model runwayml/stable-diffusion-v1-5 --resolution 256 --batch-size 32

Times the same step `pbi_ml.train.loop` runs (VAE-encode the pair, CLIP-encode the instruction,
conditioning dropout, UNet forward + backward, gradient clipping, Adam step) on synthetic pixels,
so data loading is excluded; and, separately, the step on PRE-ENCODED latents (UNet forward +
backward + Adam only), the setting of the faster anchor (docs/method.md#speed-anchors).

Reference figures (docs/method.md#speed-anchors; per A100, SD 1.5 at 256 px): ~14 samples/s original InstructPix2Pix training,
~137 samples/s for optimised trainers on pre-encoded latents. Numbers for the tiny model or on a
CPU are NOT comparable with them: they only show the code path runs and how fast a smoke run is.
"""

from __future__ import annotations

import argparse
import json
import time

ANCHOR_ORIGINAL = 14.0
ANCHOR_PRE_ENCODED = 137.0
DROPOUT = (0.05, 0.05, 0.05)  # conditioning dropout: text, image, both (TrainConfig defaults)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark(
    init_model: str, resolution: int, batch_size: int, steps: int, warmup: int, device: str, mixed_precision: str
) -> dict:
    import torch
    from accelerate import Accelerator

    from pbi_ml.devices import resolve_device
    from pbi_ml.train.config import resolve_mixed_precision
    from pbi_ml.train.loop import EncodedBatch, denoising_loss, encode_pair, encode_prompts
    from pbi_ml.train.model import load_model_parts

    device_name = resolve_device(device)
    mp = resolve_mixed_precision(mixed_precision, device_name)
    accelerator = Accelerator(mixed_precision=mp, cpu=device_name == "cpu")
    dev = accelerator.device
    parts = load_model_parts(init_model, seed=0, tiny_sample_size=max(resolution // 2, 4))
    optimizer = torch.optim.AdamW(parts.unet.parameters(), lr=5e-5, weight_decay=0.0)
    unet, optimizer = accelerator.prepare(parts.unet, optimizer)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae = parts.vae.to(dev)
    text_encoder = parts.text_encoder.to(dev)
    if weight_dtype != torch.float32:
        vae, text_encoder = vae.to(dtype=weight_dtype), text_encoder.to(dtype=weight_dtype)

    g = torch.Generator(device=dev).manual_seed(0)
    source = (torch.rand(batch_size, 3, resolution, resolution, generator=g, device=dev) * 2 - 1).to(weight_dtype)
    target = (torch.rand(batch_size, 3, resolution, resolution, generator=g, device=dev) * 2 - 1).to(weight_dtype)
    prompts = ["add a red umbrella at the top left"] * batch_size
    with torch.no_grad():
        null = encode_prompts(parts.tokenizer, text_encoder, [""], dev)

    def full_step():
        with torch.no_grad():
            text = encode_prompts(parts.tokenizer, text_encoder, prompts, dev)
            encoded = EncodedBatch(*encode_pair(vae, source, target, g), text_embeds=text)
        loss = denoising_loss(unet, parts.noise_scheduler, encoded, null_text_embeds=null, generator=g, dropout=DROPOUT)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    with torch.no_grad():
        pre_encoded = EncodedBatch(
            *encode_pair(vae, source, target, g),
            text_embeds=encode_prompts(parts.tokenizer, text_encoder, prompts, dev),
        )

    def pre_encoded_step():
        loss = denoising_loss(
            unet, parts.noise_scheduler, pre_encoded, null_text_embeds=null, generator=g, dropout=DROPOUT
        )
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()

    results = {}
    for name, step in (("full_step", full_step), ("pre_encoded_step", pre_encoded_step)):
        for _ in range(warmup):
            step()
        _sync(dev)
        started = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(dev)
        seconds = time.perf_counter() - started
        results[name] = {"samples_per_second": steps * batch_size / seconds, "seconds_per_step": seconds / steps}
    return {
        "init_model": init_model,
        "smoke_model": parts.smoke_model,
        "device": str(dev),
        "torch_threads": torch.get_num_threads(),
        "mixed_precision": accelerator.mixed_precision,
        "resolution": resolution,
        "batch_size": batch_size,
        "steps": steps,
        **results,
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init-model", default="tiny", help='"tiny" (CPU smoke model) or an SD 1.5 Hub id / local dir')
    parser.add_argument("--resolution", type=int, default=None, help="default: 32 for tiny, 256 otherwise")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 4 for tiny, 32 otherwise")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--mixed-precision", default="auto")
    args = parser.parse_args(argv)
    tiny = args.init_model == "tiny"
    resolution = args.resolution or (32 if tiny else 256)
    batch_size = args.batch_size or (4 if tiny else 32)
    result = benchmark(
        args.init_model, resolution, batch_size, args.steps, args.warmup, args.device, args.mixed_precision
    )

    reasons = [
        why
        for why, bad in (
            ("tiny random model", tiny),
            ("not a GPU", not result["device"].startswith("cuda")),
            (f"{resolution} px, not 256", resolution != 256),
        )
        if bad
    ]
    comparable = not reasons
    print(json.dumps(result, indent=1))
    label = "" if comparable else f"   [NOT comparable: {'; '.join(reasons)}]"
    print(
        f"full step        {result['full_step']['samples_per_second']:9.2f} samples/s   vs ~{ANCHOR_ORIGINAL:.0f}/A100 (original){label}"
    )
    print(
        f"pre-encoded step {result['pre_encoded_step']['samples_per_second']:9.2f} samples/s   vs ~{ANCHOR_PRE_ENCODED:.0f}/A100 (optimised, pre-encoded latents){label}"
    )
    if comparable:
        print("(anchors are per A100; scale for your GPU)")
    return result


if __name__ == "__main__":
    main()

"""Generate edits with a trained InstructPix2Pix pipeline (docs/method.md#evaluation, inference).

The paper's settings are the defaults: EulerAncestral sampler, 50 steps, text guidance 7, image guidance
1.5, seed 0. Every image gets its OWN generator seeded with `seed`, so an image's edit does not
depend on which other images share its batch or on the batch size.

Working size: `resolution=R` scales the input so its LONGER side is R (aspect ratio kept, as
InstructPix2Pix's own edit script does; MagicBrush images are 512 x 512, so R = 512 is the
paper-like setting), `resolution=None` keeps the input's own size. Both sides are then rounded to
the nearest multiple of the model's total downsampling factor (64 for SD 1.5: VAE 8 x UNet 8).
Outputs are HxWx3 uint8 at that working size; the caller resizes to the ground truth for metrics.

The pipeline is loaded without a safety checker: a blacked-out output would corrupt the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pbi_ml.errors import ConfigError

SCHEDULERS = ("euler_ancestral", "euler", "ddim", "saved")


@dataclass(frozen=True)
class GenerateConfig:
    num_inference_steps: int = 50
    guidance_scale: float = 7.0  # text guidance
    image_guidance_scale: float = 1.5
    seed: int = 0  # every image is generated with its own generator seeded with this
    scheduler: str = "euler_ancestral"  # or "euler", "ddim", "saved" (whatever the pipeline dir holds)
    resolution: int | None = None  # longer side of the working size; None = the input's own size
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"  # float16 on CUDA, float32 on CPU

    def __post_init__(self):
        if self.scheduler not in SCHEDULERS:
            raise ConfigError(f"GenerateConfig.scheduler={self.scheduler!r} not one of {SCHEDULERS}")
        if self.num_inference_steps < 1 or self.batch_size < 1:
            raise ConfigError("GenerateConfig: num_inference_steps and batch_size must be >= 1")
        if self.resolution is not None and self.resolution < 8:
            raise ConfigError(f"GenerateConfig.resolution={self.resolution}: must be >= 8 or None")


def working_size(height: int, width: int, resolution: int | None, multiple: int) -> tuple[int, int]:
    """(height, width) the model works at: longer side -> `resolution` (None: keep), both sides
    rounded to the nearest multiple of `multiple` (at least one multiple)."""
    scaled_height, scaled_width = float(height), float(width)
    if resolution is not None:
        scale = resolution / max(height, width)
        scaled_height, scaled_width = height * scale, width * scale
    return max(multiple, int(round(scaled_height / multiple)) * multiple), max(
        multiple, int(round(scaled_width / multiple)) * multiple
    )


def _scheduler(pipeline, name: str):
    from diffusers.schedulers.scheduling_ddim import DDIMScheduler
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler
    from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler

    classes = {
        "euler_ancestral": EulerAncestralDiscreteScheduler,
        "euler": EulerDiscreteScheduler,
        "ddim": DDIMScheduler,
    }
    if name == "saved":
        return pipeline.scheduler
    return classes[name].from_config(pipeline.scheduler.config)


def load_edit_pipeline(pipeline_dir: str, config: GenerateConfig):
    """StableDiffusionInstructPix2PixPipeline from a local dir or Hub id, on the configured device."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix import (
        StableDiffusionInstructPix2PixPipeline,
    )

    from pbi_ml.devices import resolve_device, resolve_dtype

    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(
        pipeline_dir, dtype=dtype, safety_checker=None, requires_safety_checker=False
    )
    pipeline.scheduler = _scheduler(pipeline, config.scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(device)


def _as_rgb(image: np.ndarray, index: int) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    if image.ndim != 3 or image.shape[2] not in (3, 4) or image.dtype != np.uint8:
        raise ValueError(f"images[{index}]: expected HxWx3 uint8, got shape {image.shape} dtype {image.dtype}")
    return image[..., :3]


def generate_edits(
    pipeline_dir: str, images: list[np.ndarray], instructions: list[str], config: GenerateConfig
) -> list[np.ndarray]:
    """Edit each image by its instruction; returns HxWx3 uint8 arrays at the working size.

    Images are batched (`config.batch_size`, consecutive images of the same working size); each
    image's result is independent of the batching (own generator, seeded with `config.seed`).
    """
    import torch

    if len(images) != len(instructions):
        raise ValueError(f"generate_edits: {len(images)} images but {len(instructions)} instructions")
    if not images:
        return []
    images = [_as_rgb(image, i) for i, image in enumerate(images)]
    pipeline = load_edit_pipeline(pipeline_dir, config)
    # total downsampling of the model (64 for SD 1.5: VAE 8 x UNet 8); sides must be multiples of it
    multiple = pipeline.vae_scale_factor * 2 ** (len(pipeline.unet.config.block_out_channels) - 1)

    prepared = []
    for image in images:
        h, w = working_size(image.shape[0], image.shape[1], config.resolution, multiple)
        pil = Image.fromarray(image)
        if (h, w) != image.shape[:2]:
            pil = pil.resize((w, h), Image.Resampling.LANCZOS)
        prepared.append(pil)

    outputs: list[np.ndarray] = []
    start = 0
    while start < len(prepared):
        end = start + 1
        while end < len(prepared) and end - start < config.batch_size and prepared[end].size == prepared[start].size:
            end += 1
        generators = [torch.Generator(device="cpu").manual_seed(config.seed) for _ in range(start, end)]
        with torch.inference_mode():
            result = pipeline(
                prompt=list(instructions[start:end]),
                image=prepared[start:end],
                num_inference_steps=config.num_inference_steps,
                guidance_scale=config.guidance_scale,
                image_guidance_scale=config.image_guidance_scale,
                generator=generators,
                output_type="np",
            )
        # diffusers annotates __call__ as `Output | tuple`; with return_dict left True it is the Output
        for array in result.images:  # pyright: ignore[reportAttributeAccessIssue]
            outputs.append(np.clip(np.rint(np.asarray(array, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8))
        start = end
    return outputs

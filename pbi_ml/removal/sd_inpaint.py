"""Removal with Stable Diffusion inpainting (diffusers): the paper's recipe.

docs/method.md#removal: `runwayml/stable-diffusion-inpainting` (SD 1.5 inpainting) at 512 px, prompt "a photo of a
background, a photo of an empty place", negative prompt "an object, a <class>", 10 denoising
steps, 3 candidates per object. All of these are `RemovalConfig` fields. (runwayml removed its
Hub repositories in 2024; the same SD 1.5 inpainting weights are re-hosted as
`stable-diffusion-v1-5/stable-diffusion-inpainting`.)

- Loading: `StableDiffusionInpaintPipeline.from_pretrained(config.model)`, a Hub id or a local
  directory, once per inpainter, lazily on the first `inpaint` call (constructing an inpainter
  touches neither torch nor CUDA). Safety checker off. Device and dtype from the config
  (`auto`: CUDA with float16 when available, else CPU with float32).
- Working image (`context`, pbi_ml/removal/context.py):
    crop (default)  an object-centred square window, resized to resolution x resolution,
                    inpainted, resized back and pasted into the original through the mask
                    (outside the mask the output is the original); every batch has one shape.
                    An object too wide for any square inside the image falls back to full.
    full            the whole image, resized so its longer side is `config.resolution` and both
                    sides are multiples of 8 (aspect kept; INTER_AREA when shrinking, bicubic
                    when enlarging; the mask nearest), the result resized back (bicubic); the
                    output is the raw pipeline image everywhere (the VAE round trip touches pixels
                    outside the mask too). The pairs stage blends either into the original.
- On CUDA: `dtype: auto` is bfloat16 where the GPU has it (else float16); the UNet and VAE use
  PyTorch's scaled-dot-product attention (AttnProcessor2_0) and channels-last memory; with
  `compile: true` the UNet is `torch.compile`d, and where this torch cannot compile (dynamo
  unsupported or disabled, or the first compiled call fails) it runs eager and logs why.
- Seeds: candidate k of every object uses seed `config.seed + k`, through its own
  `torch.Generator` on the pipeline's device, so the noise of an object's candidates does not
  depend on which other objects share its batch.
- Batching: the (object, candidate) images of one `inpaint` call are grouped by working size and
  sent to the pipeline `config.batch_size` images at a time (classifier-free guidance doubles
  the UNet batch). The same call on the same inputs gives the same bytes (on CUDA as far as the
  GPU kernels are deterministic). The same object in a *different* batch need not: float
  kernels pick a different blocking and reduction order for a different batch shape or batch
  position (on CPU, one grey level here and there). So byte-identical resumption is the
  caller's job: the removal stage always calls with the same fixed chunks of objects (see
  `pbi_ml.stages.removals`).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pbi_ml.config import RemovalConfig
from pbi_ml.devices import resolve_device, resolve_dtype
from pbi_ml.errors import ConfigError
from pbi_ml.removal.base import check_batch
from pbi_ml.removal.context import Window, context_window, crop_to_window, paste_through_mask

if TYPE_CHECKING:
    # diffusers' lazy __init__ re-exports its pipelines in a form pyright counts as private
    from diffusers import StableDiffusionInpaintPipeline  # pyright: ignore[reportPrivateImportUsage]

log = logging.getLogger(__name__)

RUNWAYML_ORG = "runwayml"
SD15_INPAINT_MIRROR = "stable-diffusion-v1-5/stable-diffusion-inpainting"  # the paper's weights, re-hosted


class DiffusersInpainter:
    """K Stable Diffusion inpaintings per object, one fixed seed per candidate."""

    name = "diffusers"

    def __init__(self, config: RemovalConfig):
        for field in ("num_candidates", "steps", "batch_size"):
            if getattr(config, field) < 1:
                raise ConfigError(f"removal: {field} must be >= 1, got {getattr(config, field)}")
        if config.resolution < 8:
            raise ConfigError(f"removal: resolution must be >= 8, got {config.resolution}")
        self.config = config
        self.pipeline: StableDiffusionInpaintPipeline | None = None  # loaded on the first inpaint() call
        self.device: str | None = None
        self.pipeline_calls = 0  # a counter for progress / benchmark reports
        self.compiled = False  # whether the UNet runs torch.compile'd (compile: true, and it could)
        self._eager_unet = None

    def candidate_labels(self) -> list[str]:
        return [f"sd seed={self.config.seed + k}" for k in range(self.config.num_candidates)]

    def load(self) -> StableDiffusionInpaintPipeline:
        """Load the pipeline (once). Called by `inpaint`; call it early to fail fast on a bad model."""
        if self.pipeline is None:
            self.device = resolve_device(self.config.device)
            self.pipeline = load_inpaint_pipeline(
                self.config.model, self.device, resolve_dtype(self.config.dtype, self.device)
            )
            if self.config.compile:
                self._compile_unet(self.pipeline)
        return self.pipeline

    def _compile_unet(self, pipeline) -> None:
        import torch

        reason = cannot_compile_reason()
        if reason is not None:
            log.warning("removal: compile: true, but %s; the UNet runs eager", reason)
            return
        self._eager_unet = pipeline.unet
        pipeline.unet = torch.compile(pipeline.unet)
        self.compiled = True

    def context_of(self, image: np.ndarray, mask: np.ndarray) -> str:
        """How this object is inpainted: "crop" or "full" (see pbi_ml/removal/context.py)."""
        return "crop" if self._window(mask) is not None else "full"

    def _window(self, mask: np.ndarray) -> Window | None:
        if self.config.context != "crop":
            return None
        return context_window(mask, self.config.min_context_px, self.config.context_scale)

    def negative_prompt_for(self, category: str) -> str:
        from pbi_ml.instruct.grammar import clean_category

        return self.config.negative_prompt.format(category=clean_category(category))

    def inpaint(
        self, images: list[np.ndarray], masks: list[np.ndarray], categories: list[str]
    ) -> list[list[np.ndarray]]:
        """Per item, K inpainted images (HxWx3 uint8, the item's original size)."""
        items = check_batch(images, masks, categories)
        if not items:
            return []
        pipeline = self.load()
        k_count = self.config.num_candidates
        windows = [self._window(mask) for _, mask in items]
        inputs = [
            crop_to_window(image, mask, window, self.config.resolution)
            if window is not None
            else to_working_size(image, mask, self.config.resolution)
            for (image, mask), window in zip(items, windows, strict=True)
        ]
        negatives = [self.negative_prompt_for(c) for c in categories]

        # (item, candidate) jobs grouped by working size, in first-seen order
        groups: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for i, (work_image, _) in enumerate(inputs):
            groups.setdefault(work_image.shape[:2], []).extend((i, k) for k in range(k_count))

        done: dict[tuple[int, int], np.ndarray] = {}  # (item, candidate) -> image
        size = self.config.batch_size
        for jobs in groups.values():
            for start in range(0, len(jobs), size):
                chunk = jobs[start : start + size]
                self.pipeline_calls += 1
                outputs = self._run_or_fall_back(
                    pipeline,
                    [inputs[i][0] for i, _ in chunk],
                    [inputs[i][1] for i, _ in chunk],
                    [negatives[i] for i, _ in chunk],
                    [self.config.seed + k for _, k in chunk],
                )
                for (i, k), out in zip(chunk, outputs, strict=True):
                    image, mask = items[i]
                    window = windows[i]
                    done[i, k] = (
                        paste_through_mask(image, mask, window, out)
                        if window is not None
                        else from_working_size(out, image.shape[:2])
                    )
        return [[done[i, k] for k in range(k_count)] for i in range(len(items))]

    def _run_or_fall_back(self, pipeline, images, masks, negatives, seeds) -> list[np.ndarray]:
        """`_run`; when a compiled UNet fails on its first calls, log why and go on eager."""
        if not self.compiled:
            return self._run(pipeline, images, masks, negatives, seeds)
        try:
            return self._run(pipeline, images, masks, negatives, seeds)
        except Exception as exc:  # torch.compile's errors have no common public base class
            log.warning("removal: the compiled UNet failed (%s: %s); running eager", type(exc).__name__, exc)
            pipeline.unet = self._eager_unet
            self.compiled = False
            return self._run(pipeline, images, masks, negatives, seeds)

    def _run(
        self,
        pipeline: StableDiffusionInpaintPipeline,
        images: list[np.ndarray],
        masks: list[np.ndarray],
        negatives: list[str],
        seeds: list[int],
    ) -> list[np.ndarray]:
        """One pipeline call on equal-size working images; returns HxWx3 uint8 arrays."""
        import torch
        from PIL import Image

        height, width = images[0].shape[:2]
        generators = [torch.Generator(device=self.device).manual_seed(seed) for seed in seeds]
        result = pipeline(
            prompt=[self.config.prompt] * len(images),
            negative_prompt=negatives,
            image=[Image.fromarray(image) for image in images],
            mask_image=[Image.fromarray(mask.astype(np.uint8) * 255) for mask in masks],
            height=height,
            width=width,
            num_inference_steps=self.config.steps,
            guidance_scale=self.config.guidance_scale,
            generator=generators,
            output_type="np",
        )
        # diffusers annotates __call__ as `Output | tuple`; with return_dict left True it is the Output
        generated = np.asarray(result.images)  # pyright: ignore[reportAttributeAccessIssue]
        return [float_to_uint8(image) for image in generated]


def load_inpaint_pipeline(model: str, device: str, dtype) -> StableDiffusionInpaintPipeline:
    """`StableDiffusionInpaintPipeline` from a Hub id or a local directory, safety checker off,
    on `device` in `dtype`, progress bars off. A model that cannot be found (e.g. a Hub id not in
    the local cache while HF_HUB_OFFLINE=1) raises ConfigError naming it."""
    from diffusers import StableDiffusionInpaintPipeline  # pyright: ignore[reportPrivateImportUsage]

    source = str(Path(model).expanduser()) if Path(model).expanduser().exists() else model
    try:
        pipeline = StableDiffusionInpaintPipeline.from_pretrained(
            source, dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as exc:
        hint = ""
        if model.startswith(f"{RUNWAYML_ORG}/"):
            hint = f" Note: runwayml removed its Hub repositories in 2024; the same weights are at {SD15_INPAINT_MIRROR!r}."
        raise ConfigError(
            f"removal model {model!r} could not be loaded: it is not a local pipeline directory, and as a "
            f"Hugging Face Hub id it is not in the local cache or cannot be downloaded "
            f"(HF_HUB_OFFLINE={_offline_flag()}).{hint} Cause: {type(exc).__name__}: {exc}"
        ) from exc
    pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    if device.startswith("cuda"):
        import torch
        from diffusers.models.attention_processor import AttnProcessor2_0

        for module in (pipeline.unet, pipeline.vae):
            module.set_attn_processor(AttnProcessor2_0())
            module.to(memory_format=torch.channels_last)
    return pipeline


def cannot_compile_reason() -> str | None:
    """Why this torch cannot `torch.compile` (None when it can, as far as can be told before trying)."""
    import torch

    if not hasattr(torch, "compile"):
        return f"torch {torch.__version__} has no torch.compile"
    import torch._dynamo

    if torch._dynamo.config.disable:
        return "TorchDynamo is disabled (TORCHDYNAMO_DISABLE is set)"
    if not torch._dynamo.is_dynamo_supported():  # pyright: ignore[reportPrivateImportUsage]
        import sys

        return f"TorchDynamo does not support Python {sys.version.split()[0]} with torch {torch.__version__}"
    return None


def _offline_flag() -> str:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "unset")


def working_size(height: int, width: int, resolution: int) -> tuple[int, int]:
    """(h, w) with the longer side scaled to `resolution`, aspect kept, both rounded to multiples of 8."""
    scale = resolution / max(height, width)

    def side(n: int) -> int:
        return max(8, 8 * math.floor(n * scale / 8 + 0.5))

    return side(height), side(width)


def to_working_size(image: np.ndarray, mask: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """The image (INTER_AREA when shrinking, bicubic when enlarging) and the bool mask (nearest)
    resized to `working_size`."""
    import cv2

    height, width = image.shape[:2]
    h, w = working_size(height, width, resolution)
    if (h, w) == image.shape[:2]:
        return image, mask
    shrinking = h * w < image.shape[0] * image.shape[1]
    work_image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    work_mask = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    return work_image, work_mask


def from_working_size(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A working-size result resized back to the original (h, w), bicubic."""
    import cv2

    if image.shape[:2] == tuple(shape):
        return image
    return cv2.resize(image, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def float_to_uint8(image: np.ndarray) -> np.ndarray:
    """A pipeline `output_type="np"` image (float in [0, 1]) as uint8, rounding to nearest."""
    return np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)

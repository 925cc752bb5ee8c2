"""The InstructPix2Pix model parts: SD 1.5 with an 8-channel UNet input.

InstructPix2Pix conditions the UNet on the input image by concatenating its VAE latents to the
noisy latents along the channel axis, so the UNet's first convolution takes 8 channels instead of
4. The extra 4 input channels are initialised to ZERO, so at step 0 the widened UNet computes
exactly what the text-to-image UNet computed. The VAE and the text encoder stay frozen.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pbi_ml.errors import ConfigError

LATENT_CHANNELS = 4
INSTRUCT_PIX2PIX_IN_CHANNELS = 8


@dataclass
class ModelParts:
    """What training needs; `unet` is the only trained module."""

    unet: Any  # diffusers UNet2DConditionModel, 8 input channels
    vae: Any  # diffusers AutoencoderKL (frozen)
    text_encoder: Any  # transformers CLIPTextModel (frozen)
    tokenizer: Any  # transformers CLIPTokenizer
    noise_scheduler: Any  # diffusers DDPMScheduler
    smoke_model: bool  # True for the tiny random model


def widen_conv_in(unet, in_channels: int = INSTRUCT_PIX2PIX_IN_CHANNELS):
    """Replace `unet.conv_in` by a conv with `in_channels` inputs: the old weights in the first
    channels, zeros in the new ones, the old bias. Updates `unet.config.in_channels`."""
    import torch
    from torch import nn

    old = unet.conv_in
    if old.in_channels >= in_channels:
        raise ConfigError(f"conv_in already has {old.in_channels} input channels (asked to widen to {in_channels})")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding)
    new = new.to(device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels].copy_(old.weight)
        if old.bias is not None:
            assert new.bias is not None, "nn.Conv2d has a bias by default"
            new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


def load_model_parts(init_model: str, seed: int = 0, tiny_sample_size: int = 16) -> ModelParts:
    """Load the SD parts from `init_model` (Hub id or local dir with unet/ vae/ text_encoder/
    tokenizer/ scheduler/ subfolders) or build the tiny random ones for "tiny"; widen the UNet to
    8 input channels unless it already is an InstructPix2Pix UNet; freeze VAE and text encoder."""
    import tempfile

    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    if init_model == "tiny":
        from pbi_ml.tiny_sd import tiny_sd_components, write_clip_tokenizer

        with tempfile.TemporaryDirectory(prefix="pbi-clip-tok-") as tok_dir:
            write_clip_tokenizer(tok_dir)
            parts = tiny_sd_components(
                unet_in_channels=LATENT_CHANNELS, sample_size=tiny_sample_size, seed=seed, tokenizer_dir=tok_dir
            )
        unet, vae, text_encoder, tokenizer = parts["unet"], parts["vae"], parts["text_encoder"], parts["tokenizer"]
        noise_scheduler = DDPMScheduler.from_config(parts["scheduler"].config)
        smoke = True
    else:
        noise_scheduler = DDPMScheduler.from_pretrained(init_model, subfolder="scheduler")
        tokenizer = CLIPTokenizer.from_pretrained(init_model, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(init_model, subfolder="text_encoder")
        vae = AutoencoderKL.from_pretrained(init_model, subfolder="vae")
        unet = UNet2DConditionModel.from_pretrained(init_model, subfolder="unet")
        smoke = False

    in_channels = unet.config["in_channels"]  # the config is a FrozenDict: keys are also attributes
    if in_channels == LATENT_CHANNELS:
        widen_conv_in(unet, INSTRUCT_PIX2PIX_IN_CHANNELS)
    elif in_channels != INSTRUCT_PIX2PIX_IN_CHANNELS:
        raise ConfigError(
            f"{init_model}: UNet has {in_channels} input channels; expected 4 (text-to-image SD) "
            f"or 8 (an InstructPix2Pix UNet). Inpainting UNets (9) cannot initialise this model."
        )
    vae.requires_grad_(False).eval()
    text_encoder.requires_grad_(False).eval()
    unet.train()
    return ModelParts(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        noise_scheduler=noise_scheduler,
        smoke_model=smoke,
    )


def build_pipeline(parts: ModelParts, unet=None):
    """A StableDiffusionInstructPix2PixPipeline from the parts (EulerAncestral sampling, the
    paper's inference scheduler; no safety checker)."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_instruct_pix2pix import (
        StableDiffusionInstructPix2PixPipeline,
    )
    from diffusers.schedulers.scheduling_euler_ancestral_discrete import EulerAncestralDiscreteScheduler

    # diffusers annotates `scheduler` as the KarrasDiffusionSchedulers enum (it takes a scheduler
    # instance), and safety_checker / feature_extractor as required (it documents and accepts None)
    return StableDiffusionInstructPix2PixPipeline(
        vae=parts.vae,
        text_encoder=parts.text_encoder,
        tokenizer=parts.tokenizer,
        unet=unet if unet is not None else parts.unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(parts.noise_scheduler.config),  # pyright: ignore[reportArgumentType]
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )

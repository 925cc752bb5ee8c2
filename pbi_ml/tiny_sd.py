"""Tiny Stable Diffusion components built from config, with no download.

Two uses:
- the embedded CPU default of training (`checkpoint` asset): a small InstructPix2Pix model trained
  for a few steps on the demo pairs, clearly labelled a smoke model;
- tests of the real loading code paths: tiny random pipelines are saved with `save_pretrained` and
  loaded back through the same `from_pretrained` code users run with real Hub ids.

The tokenizer is the real CLIP BPE tokenizer, written as a Hugging Face `CLIPTokenizer` directory
from the vocabulary open_clip's wheel ships (`bpe_simple_vocab_16e6.txt.gz`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

CLIP_VOCAB_SIZE = 49408


def _bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_clip_tokenizer(directory: str | Path) -> Path:
    """Write vocab.json + merges.txt of the real CLIP tokenizer; load with CLIPTokenizer.from_pretrained."""
    from open_clip.tokenizer import default_bpe

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == CLIP_VOCAB_SIZE
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (directory / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>",
                "pad_token": "<|endoftext|>",
                "do_lower_case": True,
            }
        )
    )
    return directory


def tiny_sd_components(
    unet_in_channels: int = 4, sample_size: int = 16, seed: int = 0, tokenizer_dir: str | Path | None = None
) -> dict:
    """Random tiny UNet / VAE / CLIP text encoder / tokenizer / scheduler (a few MB, CPU friendly).

    `unet_in_channels`: 4 for text-to-image, 9 for inpainting, 8 for InstructPix2Pix.
    `sample_size` is the latent size; the VAE downsamples by 2 (one down block), so images are
    2 * sample_size pixels on a side by default.
    """
    import tempfile

    import torch

    # diffusers' lazy __init__ re-exports its classes in a form pyright counts as private
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel  # pyright: ignore[reportPrivateImportUsage]
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=unet_in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    # AutoencoderKL annotates these as one-element tuples (`tuple[str]`), though it takes any length
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),  # pyright: ignore[reportArgumentType]
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),  # pyright: ignore[reportArgumentType]
        block_out_channels=(32, 32),  # pyright: ignore[reportArgumentType]
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=2 * sample_size,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )
    if tokenizer_dir is None:
        tokenizer_dir = write_clip_tokenizer(Path(tempfile.mkdtemp(prefix="pbi-clip-tok-")))
    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer, "scheduler": scheduler}


def save_tiny_inpaint_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random StableDiffusionInpaintPipeline saved with save_pretrained (for CPU tests)."""
    # diffusers' lazy __init__ re-exports its classes in a form pyright counts as private
    from diffusers import StableDiffusionInpaintPipeline  # pyright: ignore[reportPrivateImportUsage]

    parts = tiny_sd_components(unet_in_channels=9, seed=seed)
    # the pipelines annotate safety_checker / feature_extractor as required, but document and accept None
    pipe = StableDiffusionInpaintPipeline(
        **parts,
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)


def save_tiny_text2image_pipeline(directory: str | Path, seed: int = 0) -> Path:
    """A tiny random StableDiffusionPipeline (the 'SD 1.5' a training run initialises from)."""
    # diffusers' lazy __init__ re-exports its classes in a form pyright counts as private
    from diffusers import StableDiffusionPipeline  # pyright: ignore[reportPrivateImportUsage]

    parts = tiny_sd_components(unet_in_channels=4, seed=seed)
    # safety_checker / feature_extractor: as in save_tiny_inpaint_pipeline
    pipe = StableDiffusionPipeline(
        **parts,
        safety_checker=None,  # pyright: ignore[reportArgumentType]
        feature_extractor=None,  # pyright: ignore[reportArgumentType]
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(directory), safe_serialization=True)
    return Path(directory)

"""Tiny open_clip and DINO (ViT) models built offline, saved to disk and loaded back by path.

They exercise the real loading code (open_clip config JSON + checkpoint file, transformers
`save_pretrained` / `from_pretrained`) with random weights: the numbers they produce are finite but
carry no meaning, so tests only assert properties that hold for any weights.
"""

from __future__ import annotations

import json
from pathlib import Path

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def save_tiny_clip(
    directory: str | Path, name: str = "pbi-tiny-clip", seed: int = 0, quick_gelu: bool | None = None
) -> tuple[str, str]:
    """Write `<name>.json` (an open_clip model config) and `<name>.safetensors` (random weights).

    Returns (config_path, checkpoint_path) for `ClipEmbedder(model_name=config_path,
    pretrained=checkpoint_path)`. Use a distinct `name` per config: open_clip keys its config
    registry by file stem. `quick_gelu` writes that key into the config (None: leave it out, as
    open_clip's plain "ViT-B-32" config does). The activation has no weights, so the checkpoint
    fits either activation.
    """
    import open_clip
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config_path = directory / f"{name}.json"
    config = dict(TINY_CLIP_CONFIG)
    if quick_gelu is not None:
        config["quick_gelu"] = quick_gelu
    config_path.write_text(json.dumps(config, indent=2))
    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=TINY_CLIP_CONFIG["embed_dim"],
        vision_cfg=TINY_CLIP_CONFIG["vision_cfg"],
        text_cfg=TINY_CLIP_CONFIG["text_cfg"],
    )
    checkpoint_path = directory / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(checkpoint_path))
    return str(config_path), str(checkpoint_path)


def register_tiny_tag(monkeypatch, config_path: str, tag: str, checkpoint_path: str, quick_gelu: bool) -> None:
    """Declare an open_clip pretrained TAG for the tiny config (its file stem is the model name),
    whose weights are the local checkpoint (`"file"`, so nothing is downloaded) and whose pretrained
    config says `quick_gelu` like open_clip's "openai" tags do. Undone by `monkeypatch`."""
    from open_clip import pretrained

    stem = Path(config_path).stem
    tags = dict(pretrained._PRETRAINED.get(stem, {}))
    tags[tag] = {
        "file": checkpoint_path,
        "mean": (0.48145466, 0.4578275, 0.40821073),
        "std": (0.26862954, 0.26130258, 0.27577711),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
        "quick_gelu": quick_gelu,
    }
    monkeypatch.setitem(pretrained._PRETRAINED, stem, tags)


def mlp_activations(model) -> set[str]:
    """Class names of the activation in every transformer block's MLP (both towers)."""
    return {type(block.mlp.gelu).__name__ for block in model.modules() if hasattr(block, "mlp")}


def save_tiny_dino(directory: str | Path, seed: int = 0) -> str:
    """A random 2-layer ViT (patch 16, 224 px, like DINO ViT-S/16 but 32 wide) saved with
    `save_pretrained`; load with `ViTModel.from_pretrained(directory)`."""
    import torch
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=224,
        patch_size=16,
    )
    model = ViTModel(config, add_pooling_layer=False)
    model.save_pretrained(str(directory))
    return str(directory)

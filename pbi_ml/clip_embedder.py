"""CLIP image and text embeddings through open_clip, batched, L2-normalised.

Used by the filter scores (docs/method.md#removal-filters) and by the evaluation
metrics (CLIP-I, CLIP-T, CMMD). The model is loaded on first use; torch and open_clip are imported
only then, so importing this module is cheap and never touches CUDA.

`model_name` is an open_clip architecture name ("ViT-L-14", "ViT-B-32") or the path of an
open_clip model-config JSON file (`{"embed_dim": ..., "vision_cfg": ..., "text_cfg": ...}`), which
is registered with `open_clip.add_model_config` under the file's stem. `pretrained` is an
open_clip pretrained tag ("openai", "laion2b_s34b_b79k"; downloaded through the Hugging Face cache,
so set HF_HUB_OFFLINE=1 on machines without internet to fail at once), a path to a local
checkpoint file (`.safetensors`, or a `torch.save`d state dict, loaded with weights_only=True),
or None for random weights.

Activation. OpenAI's CLIP weights (and every open_clip tag whose pretrained config says
`quick_gelu: True`) were trained with QuickGELU, x * sigmoid(1.702 x); open_clip's plain names
("ViT-B-32", "ViT-L-14", "ViT-L-14-336") build nn.GELU and only warn about the mismatch, which
silently shifts every embedding. `create_open_clip` (the one place PBI builds an open_clip model)
builds the activation the tag was trained with: `force_quick_gelu=True` when the tag's pretrained
config (`open_clip.get_pretrained_cfg(name, tag)["quick_gelu"]`) says so and the model config
does not, and an ActivationMismatchError (a ConfigError) when the model config forces QuickGELU
on a tag trained with GELU. Should open_clip still report a QuickGELU mismatch (its warning, or
a log record in versions that log it), the build fails with an ActivationMismatchError instead
of continuing. A local checkpoint file carries no tag: its activation is the model config's (use
a `-quickgelu` name, or `"quick_gelu": true` in a config JSON, for OpenAI weights in a file).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

import numpy as np

from pbi_ml.devices import resolve_device
from pbi_ml.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from PIL import Image

_REGISTERED_CONFIGS: dict[str, dict] = {}  # stem -> content of the config JSONs registered here


class ActivationMismatchError(ConfigError):
    """An open_clip model would be built with another activation than its weights were trained with."""


# open_clip is untyped: the parts of what create_open_clip returns that PBI uses, as types
class _VisionTower(Protocol):
    image_size: int | tuple[int, int]


class _ClipModel(Protocol):
    """An open_clip CLIP / CustomTextCLIP model (an nn.Module)."""

    visual: _VisionTower

    def encode_image(self, image: torch.Tensor) -> torch.Tensor: ...

    def encode_text(self, text: torch.Tensor) -> torch.Tensor: ...

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...


_Preprocess = Callable[["Image.Image"], "torch.Tensor"]  # PIL image -> CHW tensor
_Tokenizer = Callable[[list[str]], "torch.Tensor"]  # texts -> (N, context_length) token ids


def _open_clip_model_name(model_name: str) -> str:
    """An open_clip architecture name; a config JSON path is registered under its file stem."""
    if not model_name.endswith(".json"):
        return model_name
    path = Path(model_name).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"open_clip model config {model_name!r} not found")
    import open_clip

    stem = path.stem
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"open_clip model config {path}: not readable JSON: {exc}") from None
    if not isinstance(content, dict) or not all(k in content for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ConfigError(f"{path}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg)")
    if stem in _REGISTERED_CONFIGS:
        if _REGISTERED_CONFIGS[stem] == content:  # the same architecture again (e.g. a copy elsewhere)
            return stem
        raise ConfigError(
            f"open_clip model config {path}: another config named {stem!r} is registered; rename the file"
        )
    if stem in open_clip.list_models():
        raise ConfigError(f"open_clip model config {path}: {stem!r} is a built-in open_clip model; rename the file")
    open_clip.add_model_config(path)
    _REGISTERED_CONFIGS[stem] = content
    return stem


def tag_quick_gelu(model_name: str, pretrained: str | None) -> bool | None:
    """Whether open_clip's pretrained tag `pretrained` of `model_name` was trained with QuickGELU;
    None when `pretrained` is not a tag of that model (None, a checkpoint file, an unknown tag)."""
    import open_clip

    if not pretrained:
        return None
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        return None
    return bool(cfg.get("quick_gelu", False))


class _OpenClipLog(logging.Filter):
    """Sits on the root logger (open_clip logs through `logging.warning` / `logging.error`) while a
    model is built: collects QuickGELU mismatch reports, and drops open_clip's ERROR lines about
    weights it cannot load (the exception that follows carries the same message)."""

    def __init__(self):
        super().__init__()
        self.mismatches: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno >= logging.WARNING and "quickgelu" in message.lower().replace(" ", "").replace("_", ""):
            self.mismatches.append(message)
        return record.levelno < logging.ERROR


def create_open_clip(
    model_name: str, pretrained: str | None, device: str, precision: str
) -> tuple[_ClipModel, _Preprocess, _Tokenizer]:
    """(model in eval mode, evaluation preprocessing, tokenizer) of an open_clip model, built with
    the activation its pretrained tag was trained with (see the module docstring). Every CLIP model
    PBI uses (filter scores, CLIP-I / CLIP-T, CMMD) is built here."""
    import open_clip

    name = _open_clip_model_name(model_name)
    if pretrained is not None and os.path.isfile(os.path.expanduser(pretrained)):
        pretrained = os.path.expanduser(pretrained)  # a local checkpoint file (tags are checked first by open_clip)
    tag_quick = tag_quick_gelu(name, pretrained)
    model_quick = bool((open_clip.get_model_config(name) or {}).get("quick_gelu", False))
    if tag_quick is False and model_quick:
        raise ActivationMismatchError(
            f"open_clip model {name!r} uses QuickGELU but pretrained tag {pretrained!r} was trained with GELU; "
            f"use the model name without '-quickgelu'"
        )
    force_quick_gelu = bool(tag_quick) and not model_quick
    log = _OpenClipLog()
    root = logging.getLogger()
    root.addFilter(log)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("error", message=".*QuickGELU mismatch.*")
            model, _, preprocess = open_clip.create_model_and_transforms(
                name,
                pretrained=pretrained,
                device=device,
                precision=precision,
                force_quick_gelu=force_quick_gelu,
                weights_only=True,
            )
    except UserWarning as exc:
        raise ActivationMismatchError(f"open_clip {name!r} / {pretrained!r}: {exc}") from None
    finally:
        root.removeFilter(log)
    if log.mismatches:
        raise ActivationMismatchError(f"open_clip {name!r} / {pretrained!r}: {log.mismatches[0]}")
    model.eval()
    return cast(_ClipModel, model), cast(_Preprocess, preprocess), cast(_Tokenizer, open_clip.get_tokenizer(name))


class ClipEmbedder:
    """open_clip image / text encoder returning L2-normalised float32 numpy embeddings.

    Images are HxWx3 uint8 arrays and go through the model's own evaluation preprocessing
    (resize of the shortest side, centre crop, normalisation). `precision` "auto" is fp16 on CUDA
    and fp32 elsewhere.
    """

    def __init__(
        self,
        model_name: str,
        pretrained: str | None,
        device: str = "auto",
        batch_size: int = 32,
        precision: str = "auto",
    ):
        self.model_name = model_name
        self.pretrained = pretrained or None
        self.device_request = device
        self.batch_size = max(1, int(batch_size))
        self.precision = precision
        self._model: _ClipModel | None = None
        self._preprocess: _Preprocess | None = None
        self._tokenizer: _Tokenizer | None = None
        self._device: str | None = None
        self._text_cache: dict[str, np.ndarray] = {}

    # -- loading -----------------------------------------------------------------------------

    def load(self) -> ClipEmbedder:
        """Load model, preprocessing and tokenizer now (otherwise done on first use)."""
        if self._model is not None:
            return self
        device = resolve_device(self.device_request)
        precision = self.precision
        if precision == "auto":
            precision = "fp16" if device.startswith("cuda") else "fp32"
        model, preprocess, tokenizer = create_open_clip(self.model_name, self.pretrained, device, precision)
        self._model, self._preprocess, self._tokenizer, self._device = model, preprocess, tokenizer, device
        return self

    def _loaded(self) -> tuple[_ClipModel, _Preprocess, _Tokenizer, str]:
        """(model, preprocessing, tokenizer, device), loaded first if need be."""
        self.load()
        model, preprocess, tokenizer, device = self._model, self._preprocess, self._tokenizer, self._device
        assert model is not None and preprocess is not None and tokenizer is not None and device is not None, (
            "load() sets model, preprocessing, tokenizer and device together"
        )
        return model, preprocess, tokenizer, device

    @property
    def model(self) -> _ClipModel:
        """The loaded open_clip model (eval mode)."""
        return self._loaded()[0]

    @property
    def image_size(self) -> int:
        """The square input side of the vision tower (224 for ViT-B/32, 336 for ViT-L/14@336)."""
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def tokenizer(self) -> _Tokenizer:
        """The open_clip tokenizer (for standard CLIP text towers: the real CLIP BPE tokenizer)."""
        return self._loaded()[2]

    @property
    def device(self) -> str:
        return self._loaded()[3]

    # -- embeddings ----------------------------------------------------------------------------

    def embed_images(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of HxWx3 uint8 images, in batches."""
        import torch
        from PIL import Image

        model, preprocess, _, device = self._loaded()

        def prepared(image: np.ndarray):
            array = np.asarray(image)
            if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
                raise ValueError(f"embed_images wants HxWx3 uint8 arrays, got {array.dtype} {array.shape}")
            return preprocess(Image.fromarray(array))

        out = []
        # PIL's resize releases the GIL: a few threads keep a GPU's CLIP fed (one core does ~1,000/s)
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for start in range(0, len(images), self.batch_size):
                tensors = list(pool.map(prepared, images[start : start + self.batch_size]))
                batch = torch.stack(tensors).to(device, dtype=self._model_dtype())
                with torch.inference_mode():
                    features = model.encode_image(batch)
                out.append(_normalise(features))
        return _stack(out)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(N, D) float32 L2-normalised embeddings of texts, in batches. Embeddings are remembered
        per text (prompts such as "a photo of a <class>" repeat across calls)."""
        import torch

        model, _, tokenizer, device = self._loaded()
        todo = list(dict.fromkeys(t for t in texts if t not in self._text_cache))
        for start in range(0, len(todo), self.batch_size):
            chunk = todo[start : start + self.batch_size]
            tokens = tokenizer(chunk).to(device)
            with torch.inference_mode():
                features = model.encode_text(tokens)
            self._text_cache.update(zip(chunk, _normalise(features), strict=True))
        return _stack([np.stack([self._text_cache[t] for t in texts])] if texts else [])

    def _model_dtype(self):
        return next(self.model.parameters()).dtype


def _normalise(features) -> np.ndarray:
    features = features.float().cpu().numpy()
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return (features / np.maximum(norms, 1e-12)).astype(np.float32)


def _stack(chunks: list[np.ndarray]) -> np.ndarray:
    if not chunks:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(chunks, axis=0)

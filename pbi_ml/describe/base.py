"""Descriptions of removed objects: the config, the item type, the object-only view, the factory.

docs/method.md#descriptions: CogVLM sees the original photo with everything but the object masked out and is asked
"Accurately describe the main characteristics of the <class>. Use few words which best describe
the <class>". A describer turns a batch of `DescribeItem`s into one short text per item.

Two backends:
- `pixels` (embedded default, no weights): colour names, size, shape and texture measured under the
  mask, phrased around the given class name (pbi_ml/describe/pixels.py);
- `vlm`: a transformers image-text-to-text model with the paper's prompt (pbi_ml/describe/vlm.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pbi_ml.config.fields import check_fields
from pbi_ml.devices import DTYPES
from pbi_ml.errors import ConfigError, ItemError
from pbi_ml.masks import bbox_of, check_image_and_mask, crop_box

DESCRIBE_BACKENDS = ("pixels", "vlm")
PAPER_PROMPT = (
    "Accurately describe the main characteristics of the {category}. Use few words which best describe the {category}"
)
OUTSIDE_FILL = (128, 128, 128)  # neutral grey: carries no colour the describer could attribute to the object


@dataclass(frozen=True)
class DescribeConfig:
    """How objects are described.

    `model` is a Hub id or a local directory of a model transformers loads natively with
    `AutoModelForImageTextToText` (default Qwen2-VL-2B-Instruct). The paper's CogVLM
    (`THUDM/cogvlm-chat-hf`) ships its own modelling code: it loads only with
    `trust_remote_code: true`, set explicitly, and needs `tokenizer` (its model card uses
    `lmsys/vicuna-7b-v1.5`). `prompt` is the paper's prompt (docs/method.md#descriptions); `{category}` is replaced by
    the class name.
    """

    backend: str = "pixels"  # "pixels" (embedded, CPU, no weights) or "vlm"
    model: str = "Qwen/Qwen2-VL-2B-Instruct"  # Hub id or local directory (vlm)
    trust_remote_code: bool = False  # load a model's own modelling code (CogVLM); set explicitly
    tokenizer: str | None = None  # only for models whose repo ships no tokenizer (CogVLM)
    prompt: str = PAPER_PROMPT  # {category}: the object's class name
    max_new_tokens: int = 40  # the longest description, in tokens
    batch_size: int = 4  # objects per model call
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    dtype: str = "auto"  # "auto" = bfloat16 on a GPU that has it (else float16), float32 on cpu

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device (pixels does not)."""
        return self.backend == "vlm"

    def __post_init__(self):
        check_fields(self, backend=DESCRIBE_BACKENDS, max_new_tokens="positive", batch_size="positive", dtype=DTYPES)


@dataclass
class DescribeItem:
    """One object to describe: the ORIGINAL photo (object present), its mask, its class name.

    Validated on construction, so a broken item fails alone with an `ItemError` reason
    (`bad_image`, `bad_mask`, `mask_size_mismatch`, `empty_mask`, `no_category`).
    """

    image: np.ndarray  # HxWx3 uint8
    mask: np.ndarray  # HxW bool
    category: str

    def __post_init__(self):
        image, mask = check_image_and_mask(self.image, self.mask)
        if not isinstance(self.category, str) or not self.category.strip():
            raise ItemError("no_category", f"category {self.category!r}")
        self.image = image
        self.mask = mask


class Describer(Protocol):
    """What every description backend provides."""

    name: str

    def describe(self, items: list[DescribeItem]) -> list[str]:
        """One description per item, in order."""
        ...


def masked_object_view(
    image: np.ndarray, mask: np.ndarray, pad: float = 0.1, fill: tuple[int, int, int] = OUTSIDE_FILL
) -> np.ndarray:
    """The object alone: every pixel outside `mask` set to neutral grey, cropped to a box around the
    object padded by `pad` of its size on each side (docs/method.md#descriptions: the VLM sees only the object).
    Returns a new HxWx3 uint8 array."""
    mask = mask.astype(bool)
    if not mask.any():
        raise ItemError("empty_mask", "the mask has no pixels")
    x0, y0, x1, y1 = crop_box(bbox_of(mask), mask.shape, pad=pad)
    view = image[y0:y1, x0:x1].copy()
    view[~mask[y0:y1, x0:x1]] = np.asarray(fill, dtype=np.uint8)
    return view


def make_describer(config: DescribeConfig) -> Describer:
    """The describer for `config.backend` ("pixels" or "vlm"). Model weights load here, not at import."""
    if config.backend == "pixels":
        from pbi_ml.describe.pixels import PixelDescriber

        return PixelDescriber(config)
    if config.backend == "vlm":
        from pbi_ml.describe.vlm import VLMDescriber

        return VLMDescriber(config)
    raise ConfigError(f"describe backend {config.backend!r} not one of {DESCRIBE_BACKENDS}")

"""Descriptions by a vision-language model (transformers), the paper's prompt (docs/method.md#descriptions).

The model sees `masked_object_view(image, mask)`: the object alone on neutral grey, cropped to a
padded box. Loading (`ChatVLM`, shared with the pair judge): `AutoProcessor` +
`AutoModelForImageTextToText` by Hub id or local directory;
the prompt goes through the processor's chat template (one user turn: the image, then the text);
batched greedy generation with left padding; only the newly generated tokens are decoded.

Models with their own modelling code (the paper's CogVLM, `THUDM/cogvlm-chat-hf`) load only when
`trust_remote_code` is set explicitly; otherwise they are refused with a ConfigError. CogVLM has no
processor: it is driven through its `build_conversation_input_ids` method, one item at a time, with
the tokenizer named by `DescribeConfig.tokenizer` (its model card uses `lmsys/vicuna-7b-v1.5`).
That path follows the model card and is not exercised offline.
"""

from __future__ import annotations

import json
from pathlib import Path

from pbi_ml.describe.base import DescribeConfig, DescribeItem, masked_object_view
from pbi_ml.devices import resolve_device, resolve_dtype
from pbi_ml.errors import ConfigError

# Hub ids known to need their own modelling code (a local directory is checked by its config.json).
REMOTE_CODE_MODELS = ("thudm/cogvlm", "thudm/cogagent", "thudm/cogvlm2")
MIN_VIEW_SIDE = 56  # processors reject tiny images (Qwen2-VL needs >= 28 px a side); upscale below this


def needs_remote_code(model: str) -> bool:
    """True when `model` ships its own modelling code (config.json has an `auto_map`, or a known Hub id)."""
    config_file = Path(model) / "config.json"
    if config_file.is_file():
        try:
            return "auto_map" in json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError):
            return False
    return model.lower().startswith(REMOTE_CODE_MODELS)


def _refuse_remote_code(config: DescribeConfig) -> None:
    if needs_remote_code(config.model) and not config.trust_remote_code:
        raise ConfigError(
            f"describe model {config.model!r} needs its own modelling code; set trust_remote_code: true "
            "explicitly if you trust it (off by default), or use a model transformers supports natively "
            "such as Qwen/Qwen2-VL-2B-Instruct"
        )


def _is_cogvlm(model: str) -> bool:
    """A CogVLM / CogAgent checkpoint (driven by build_conversation_input_ids, not a processor)."""
    from transformers import AutoConfig

    architectures = getattr(AutoConfig.from_pretrained(model, trust_remote_code=True), "architectures", None) or []
    return any(name.startswith(("CogVLM", "CogAgent")) for name in architectures)


def _view_for_model(item: DescribeItem):
    """The object-only view as a PIL image, upscaled (bicubic) if a side is under MIN_VIEW_SIDE."""
    from PIL import Image

    view = Image.fromarray(masked_object_view(item.image, item.mask))
    w, h = view.size
    if min(w, h) < MIN_VIEW_SIDE:
        scale = MIN_VIEW_SIDE / min(w, h)
        view = view.resize(
            (max(MIN_VIEW_SIDE, round(w * scale)), max(MIN_VIEW_SIDE, round(h * scale))), Image.Resampling.BICUBIC
        )
    return view


class ChatVLM:
    """A transformers image-text-to-text chat model (Qwen2-VL, Qwen2.5-VL, ...) by Hub id or local
    directory, asked one user turn per item (its images, then a text), batched greedy generation with
    left padding; the describer and the pair judge (pbi_ml/judge.py) both load it here."""

    def __init__(self, model: str, device: str, dtype: str, remote: dict | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        remote = remote or {}
        self.processor = AutoProcessor.from_pretrained(model, **remote)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=self.dtype, **remote)
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # transformers types PreTrainedModel.to as @wraps(nn.Module.to), which pyright can't bind to the model
        self.model.to(self.device).eval()  # pyright: ignore[reportArgumentType]

    def generate(self, turns: list[tuple[list, str]], max_new_tokens: int) -> list[str]:
        """One answer per (PIL images, text) user turn, for one batch."""
        import torch

        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [*({"type": "image"} for _ in images), {"type": "text", "text": text}]}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for images, text in turns
        ]
        images = [image for images, _ in turns for image in images]
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        inputs = {k: _to(v, self.device, self.dtype) for k, v in inputs.items()}
        with torch.inference_mode():
            # transformers' generate(self: GenerativePreTrainedModel) protocol rejects its own auto classes
            generated = self.model.generate(  # pyright: ignore[reportAttributeAccessIssue]
                **inputs, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=self.tokenizer.pad_token_id
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return [text.strip() for text in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class VLMDescriber:
    """A transformers image-text-to-text model asked the paper's prompt about each object."""

    name = "vlm"

    def __init__(self, config: DescribeConfig):
        _refuse_remote_code(config)
        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        remote = {"trust_remote_code": True} if config.trust_remote_code else {}
        self.chat: ChatVLM | None = None
        try:
            if config.trust_remote_code and _is_cogvlm(config.model):
                self._load_cogvlm(remote)
            else:
                self.chat = ChatVLM(config.model, config.device, config.dtype, remote)
                self.tokenizer = self.chat.tokenizer
        except ValueError as exc:
            if "trust_remote_code" in str(exc):
                raise ConfigError(f"describe model {config.model!r}: {exc}") from None
            raise

    def _load_cogvlm(self, remote: dict) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not self.config.tokenizer:
            raise ConfigError(
                f"describe model {self.config.model!r} is CogVLM, whose repository ships no tokenizer: "
                "set `tokenizer` (its model card uses lmsys/vicuna-7b-v1.5)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer)
        self.model = AutoModelForCausalLM.from_pretrained(self.config.model, dtype=self.dtype, **remote)
        self.model.to(self.device).eval()  # pyright: ignore[reportArgumentType]  (as in ChatVLM)

    def prompt_for(self, category: str) -> str:
        from pbi_ml.instruct.grammar import clean_category

        return self.config.prompt.format(category=clean_category(category))

    def describe(self, items: list[DescribeItem]) -> list[str]:
        if self.chat is None:  # CogVLM: one item at a time
            return [text for item in items for text in self._describe_cogvlm(item)]
        out: list[str] = []
        for start in range(0, len(items), self.config.batch_size):
            batch = items[start : start + self.config.batch_size]
            turns = [([_view_for_model(item)], self.prompt_for(item.category)) for item in batch]
            out.extend(self.chat.generate(turns, self.config.max_new_tokens))
        return out

    def _describe_cogvlm(self, item: DescribeItem) -> list[str]:
        import torch

        # CogVLM's remote code defines this method; to typing the model is a transformers class without it
        built = self.model.build_conversation_input_ids(  # pyright: ignore[reportCallIssue]
            self.tokenizer, query=self.prompt_for(item.category), history=[], images=[_view_for_model(item)]
        )
        inputs = {
            "input_ids": built["input_ids"].unsqueeze(0).to(self.device),
            "token_type_ids": built["token_type_ids"].unsqueeze(0).to(self.device),
            "attention_mask": built["attention_mask"].unsqueeze(0).to(self.device),
            "images": [[built["images"][0].to(self.device, self.dtype)]],
        }
        with torch.inference_mode():
            # generate: as in ChatVLM.generate
            generated = self.model.generate(  # pyright: ignore[reportAttributeAccessIssue]
                **inputs, do_sample=False, max_new_tokens=self.config.max_new_tokens
            )
        new_tokens = generated[:, inputs["input_ids"].shape[1] :]
        return [self.tokenizer.decode(new_tokens[0], skip_special_tokens=True).strip()]


def _to(value, device: str, dtype):
    """Move a processor output to the device; floating tensors (pixel values) also to the model dtype."""
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    if torch.is_floating_point(value):
        return value.to(device=device, dtype=dtype)
    return value.to(device)

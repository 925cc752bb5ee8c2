"""The description -> instruction rewrite by a causal language model (the paper's recipe).

docs/method.md#instructions: Mistral-7B-Instruct with 5 in-context examples; each user turn is, verbatim,
"Convert the following sentence into a short image addition instruction: <caption>. Use
straightforward language and describe only the <class>. Ignore surroundings and background and
avoid pictorial description." The examples come from a versioned JSON file
(pbi_ml/instruct/fewshot_v2.json by default): user turn + assistant answer each.

Loading: transformers AutoTokenizer + AutoModelForCausalLM by Hub id or local directory, or a GGUF
file inside a directory (`gguf_file`; transformers dequantises it; see pbi_ml/gguf_cache.py to turn
it into a normal directory once). The prompt goes through the tokenizer's chat template when it has
one, else a plain "User: / Assistant:" transcript. Batched, left-padded, greedy; only new tokens are
decoded; the first non-empty line is kept, labels and quotes stripped. An empty or letter-less
answer is None: the caller falls back to the class template and records why.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from pbi_ml.devices import resolve_device, resolve_dtype
from pbi_ml.errors import ConfigError
from pbi_ml.instruct.base import FEWSHOT_DEFAULT, InstructConfig
from pbi_ml.instruct.grammar import clean_category

PAPER_TURN = (
    "Convert the following sentence into a short image addition instruction: {caption}. "
    "Use straightforward language and describe only the {category}. "
    "Ignore surroundings and background and avoid pictorial description."
)
_LABEL = re.compile(r"^(?:instruction|answer|assistant|output|response)\s*:\s*", re.IGNORECASE)
_QUOTES = "\"'`“”‘’"


def load_fewshot(path: str | Path | None = None) -> dict:
    """The in-context examples file: {"version": str, "examples": [{"caption", "category", "instruction"}]}."""
    path = Path(path) if path else FEWSHOT_DEFAULT
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"fewshot file {path}: {exc}") from None
    examples = data.get("examples") if isinstance(data, dict) else None
    if not isinstance(data, dict) or not isinstance(data.get("version"), str) or not isinstance(examples, list):
        raise ConfigError(f"fewshot file {path}: expected {{'version': str, 'examples': [...]}}")
    for i, ex in enumerate(examples):
        if not isinstance(ex, dict) or not all(
            isinstance(ex.get(k), str) and ex[k].strip() for k in ("caption", "category", "instruction")
        ):
            raise ConfigError(
                f"fewshot file {path}: examples[{i}] needs non-empty 'caption', 'category', 'instruction'"
            )
    return data


def user_turn(caption: str, category: str) -> str:
    """The paper's user turn for one caption (a trailing full stop of the caption is not doubled)."""
    caption = " ".join(caption.split()).rstrip(" .")
    return PAPER_TURN.format(caption=caption, category=clean_category(category))


def build_messages(caption: str, category: str, examples: list[dict]) -> list[dict]:
    """Chat messages: the in-context examples as user/assistant turns, then the caption to convert."""
    messages = []
    for ex in examples:
        messages.append({"role": "user", "content": user_turn(ex["caption"], ex["category"])})
        messages.append({"role": "assistant", "content": ex["instruction"]})
    messages.append({"role": "user", "content": user_turn(caption, category)})
    return messages


def plain_prompt(messages: list[dict]) -> str:
    """Fallback prompt for tokenizers without a chat template."""
    lines = [f"{'User' if m['role'] == 'user' else 'Assistant'}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"


def clean_answer(text: str) -> str | None:
    """First non-empty line, without a leading label, quotes or a final full stop; None if no letters."""
    for line in (text or "").splitlines():
        line = _LABEL.sub("", line.strip()).strip().strip(_QUOTES).strip()
        line = " ".join(line.split()).rstrip(".").strip().strip(_QUOTES).strip()
        if line:
            return line if re.search(r"[A-Za-z]", line) else None
    return None


class LLMWriter:
    """Rewrites descriptions into short "add ..." instructions with a causal LM and the paper's prompt."""

    name = "llm"

    def __init__(self, config: InstructConfig):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.config = config
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.fewshot = load_fewshot(config.fewshot_file)
        gguf = {"gguf_file": config.gguf_file} if config.gguf_file else {}
        self.tokenizer = AutoTokenizer.from_pretrained(config.model, **gguf)
        model = AutoModelForCausalLM.from_pretrained(config.model, dtype=self.dtype, **gguf)
        # transformers types PreTrainedModel.to as @wraps(nn.Module.to), which pyright can't bind to the model
        self.model = model.to(self.device).eval()  # pyright: ignore[reportArgumentType]
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.has_chat_template = bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def fewshot_version(self) -> str:
        return self.fewshot["version"]

    def prompt(self, caption: str, category: str) -> str:
        """The full prompt text for one caption (chat template applied, generation prompt open)."""
        messages = build_messages(caption, category, self.fewshot["examples"])
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return plain_prompt(messages)

    def rewrite(self, descriptions: list[str], categories: list[str], keys: list[str]) -> list[str | None]:
        if not (len(descriptions) == len(categories) == len(keys)):
            raise ValueError("rewrite: descriptions, categories and keys must have the same length")
        out: list[str | None] = []
        size = self.config.batch_size
        for start in range(0, len(descriptions), size):
            prompts = [
                self.prompt(d, c)
                for d, c in zip(descriptions[start : start + size], categories[start : start + size], strict=True)
            ]
            out.extend(clean_answer(text) for text in self._generate(prompts))
        return out

    def _generate(self, prompts: list[str]) -> list[str]:
        import torch

        # A chat template already writes the special tokens (BOS) into the text.
        inputs = self.tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=not self.has_chat_template
        )
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        torch.manual_seed(self.config.seed)
        with torch.inference_mode():
            # transformers' generate(self: GenerativePreTrainedModel) protocol rejects its own auto classes
            generated = self.model.generate(  # pyright: ignore[reportAttributeAccessIssue]
                **inputs,
                do_sample=False,
                max_new_tokens=self.config.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        return self.tokenizer.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

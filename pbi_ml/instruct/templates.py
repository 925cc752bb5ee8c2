"""Instruction text without a model: class templates, removal prompts, the embedded rewrite writer,
location phrases. The English (articles, noun phrases, class names) is pbi_ml/instruct/grammar.py.

- `class_instruction("cat")` -> "add a cat" (PIPE's `Instruction_Class`), with a/an, "a pair of"
  for pair nouns ("add a pair of scissors") and no article for plural or mass nouns
  ("add stairs", "add broccoli").
- `removal_prompt`: the export's reverse pair prompt, "remove the <class>" or "remove the <the
  description's noun phrase>" (`removal_instruction`), picked per pair by a seeded hash.
- `TemplateWriter`: the embedded default for the rewrite kind (PIPE's `Instruction_VLM-LLM`):
  varied "add / put / insert / place ..." templates over the description. The template is chosen by
  a stable hash of (seed, item key), so a re-run writes identical text.
- `location_phrase("top left")` -> " at the top left": appended by the trainer with probability
  0.25 (docs/method.md#instructions), never stored in the instruction columns.
"""

from __future__ import annotations

import hashlib
import re

from pbi_ml.instruct.grammar import class_noun_phrase, clean_category, description_noun_phrase, head_noun_phrase
from pbi_ml.sources.base import stable_hash

# (verb, ending): "add {np}", "put {np} in the picture", ... The ending is dropped when the noun
# phrase ends in a clause ("add a cat, orange fur and white paws").
VERB_TEMPLATES = (
    ("add", ""),
    ("put", ""),
    ("insert", ""),
    ("place", ""),
    ("add", " to the image"),
    ("put", " in the picture"),
    ("insert", " into the scene"),
    ("place", " in the image"),
)


def class_instruction(category: str) -> str:
    """The paper's class template: "add a <class>" ("add a cat", "add an apple", "add a baseball bat")."""
    return f"add {class_noun_phrase(category)}"


def location_phrase(location: str | None) -> str:
    """ " at the <location>" for a 3x3-grid cell ("top left" ... "bottom right"); "" for none.

    The trainer appends it to an instruction with probability 0.25 (docs/method.md#instructions); it is never stored."""
    location = (location or "").strip()
    return f" at the {location}" if location else ""


def removal_instruction(description: str | None, category: str) -> str:
    """ "remove the <noun phrase>" from the description when its first sentence names the class as
    the head of a noun phrase (`pbi_ml.instruct.grammar.head_noun_phrase`), else "remove the
    <class>": "a small brown dog on the grass" -> "remove the small brown dog"; "A photo of a dog
    bowl" -> "remove the dog" for class dog; "" when there is no class name either."""
    sentence = re.split(r"[.;:!?\n]", (description or "").strip().lower(), maxsplit=1)[0]
    phrase = head_noun_phrase(sentence, [category])
    return f"remove the {phrase}" if phrase else fallback_removal(category)


def fallback_removal(category: str) -> str:
    """ "remove the <class>" ("" without a class name)."""
    name = clean_category(category)
    return f"remove the {name}" if name else ""


def removal_prompt(pair_id: str, description: str | None, category: str, seed: int) -> str:
    """The pair's removal prompt: "remove the <class>" or `removal_instruction`'s description form,
    picked by a hash of (seed, pair_id), so the same seed always gives the same prompt."""
    options = list(
        dict.fromkeys(p for p in (fallback_removal(category), removal_instruction(description, category)) if p)
    )
    if not options:
        return ""
    digest = hashlib.blake2b(f"{seed}|{pair_id}".encode(), digest_size=8).digest()
    return options[int.from_bytes(digest, "big") % len(options)]


# --------------------------------------------------------------------------------------------
# The embedded rewrite writer


class TemplateWriter:
    """Embedded default rewrite writer: "add / put / insert / place" templates over the description.

    The template is chosen by a stable hash of (seed, key), so the same pair always gets the same
    text and the corpus still mixes phrasings. No model, no randomness across runs."""

    name = "templates"

    def __init__(self, config=None):
        self.seed = int(getattr(config, "seed", 0) or 0)

    def rewrite(self, descriptions: list[str], categories: list[str], keys: list[str]) -> list[str | None]:
        if not (len(descriptions) == len(categories) == len(keys)):
            raise ValueError("rewrite: descriptions, categories and keys must have the same length")
        out: list[str | None] = []
        for description, category, key in zip(descriptions, categories, keys, strict=True):
            verb, ending = VERB_TEMPLATES[stable_hash(f"{self.seed}|{key}") % len(VERB_TEMPLATES)]
            phrase = description_noun_phrase(description, category)
            out.append(f"{verb} {phrase}" if "," in phrase else f"{verb} {phrase}{ending}")
        return out

"""Instruction text without a model: class templates, the embedded rewrite writer, location phrases.

- `class_instruction("cat")` -> "add a cat" (PIPE's `Instruction_Class`), with a/an, "a pair of"
  for pair nouns ("add a pair of scissors") and no article for plural or mass nouns
  ("add stairs", "add broccoli").
- `TemplateWriter`: the embedded default for the rewrite kind (PIPE's `Instruction_VLM-LLM`):
  varied "add / put / insert / place ..." templates over the description. The template is chosen by
  a stable hash of (seed, item key), so a re-run writes identical text.
- `location_phrase("top left")` -> " at the top left": appended by the trainer with probability
  0.25 (docs/method.md#instructions), never stored in the instruction columns.

Class names arrive as their source spells them: COCO "baseball bat", LVIS "bow_(weapon)", Open
Images "Human face". `clean_category` makes them readable: underscores to spaces, the
parenthesised LVIS disambiguator dropped, a capitalised first word lower-cased.
"""

from __future__ import annotations

import re

from pbi_ml.sources.base import stable_hash

# Nouns used as "a pair of X".
PAIR_NOUNS = frozenset(
    "scissors jeans pants trousers shorts slacks leggings tights overalls pajamas pyjamas sweatpants "
    "glasses sunglasses eyeglasses spectacles goggles binoculars tongs pliers tweezers shears clippers "
    "headphones earphones earmuffs skis handcuffs".split()
)
# Nouns that take no article ("add broccoli", "add stairs").
MASS_NOUNS = frozenset(
    "broccoli lettuce spinach rice pasta spaghetti popcorn cereal hay sand snow stairs honey milk water sugar salt butter".split()
)
# Words ending in "s" that are singular.
SINGULAR_S = frozenset(
    "bus lens canvas gas glass grass dress mattress chess compass harness cactus octopus walrus hippopotamus "
    "platypus asparagus hibiscus iris bonus virus fungus hummus tennis series species news mess boss cross "
    "moss press brass class kiss christmas atlas bias yes this his abacus papyrus tortoise hovercraft "
    "pancreas analysis axis oasis".split()
)
# A vowel letter pronounced as a consonant ("a unicorn", "a euro", "a one-way sign").
_CONSONANT_SOUND_VOWEL = (
    "uni",
    "use",
    "usu",
    "uti",
    "ura",
    "ure",
    "uri",
    "uro",
    "uku",
    "eu",
    "ewe",
    "one",
    "once",
    "ubiq",
)
# A consonant letter pronounced as a vowel ("an hour", "an honest").
_VOWEL_SOUND_CONSONANT = ("hour", "honest", "honor", "honour", "heir", "x-ray", "xray")
DETERMINERS = frozenset(
    "a an the this that these those some one two three several his her its their my your our".split()
)

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

_PAREN = re.compile(r"\s*\([^)]*\)")
_SPACES = re.compile(r"\s+")


def clean_category(name: str) -> str:
    """A readable class name: "bow_(weapon)" -> "bow", "Human face" -> "human face"."""
    text = _PAREN.sub("", str(name)).replace("_", " ")
    text = _SPACES.sub(" ", text).strip()
    words = text.split(" ")
    if words and len(words[0]) > 1 and words[0][0].isupper() and words[0][1:].islower():
        words[0] = words[0].lower()
    return " ".join(words)


def indefinite_article(phrase: str) -> str:
    """ "a" or "an" for the first word of `phrase` (by sound, for common English exceptions)."""
    word = phrase.strip().lower()
    if not word:
        return "a"
    if word.startswith(_VOWEL_SOUND_CONSONANT):
        return "an"
    if word.startswith(_CONSONANT_SOUND_VOWEL):
        return "a"
    if word[0] in "aeiou":
        return "an"
    if word[0] == "8" or word.startswith(("11 ", "18 ")):
        return "an"
    return "a"


def with_article(phrase: str) -> str:
    """ "cat" -> "a cat", "apple" -> "an apple"; a phrase already starting with a determiner is kept."""
    phrase = phrase.strip()
    first = phrase.split(" ", 1)[0].lower() if phrase else ""
    if first in DETERMINERS:
        return phrase
    return f"{indefinite_article(phrase)} {phrase}"


def noun_kind(category: str) -> str:
    """How the (cleaned) class name takes an article: "pair", "plural", "mass" or "count"."""
    last = clean_category(category).lower().split(" ")[-1] if category else ""
    if last in PAIR_NOUNS:
        return "pair"
    if last in MASS_NOUNS:
        return "mass"
    if looks_plural(last):
        return "plural"
    return "count"


def looks_plural(word: str) -> bool:
    """A conservative guess that `word` is a plural ("bananas", "stairs"), not a singular in -s ("bus")."""
    word = word.lower()
    if len(word) < 4 or not word.endswith("s") or word in SINGULAR_S:
        return False
    return not word.endswith(("ss", "us", "is", "ous", "sis"))


def class_noun_phrase(category: str) -> str:
    """The class as a noun phrase with the right article: "a cat", "a pair of scissors", "stairs"."""
    return noun_phrase(clean_category(category), category)


def noun_phrase(phrase: str, category: str) -> str:
    """`phrase` (ending in the class name) with what the class needs in front: "a pair of ..." for
    pair nouns, nothing for plural and mass nouns, else "a"/"an"."""
    kind = noun_kind(clean_category(category))
    if kind == "pair":
        return f"a pair of {phrase}"
    if kind in ("plural", "mass"):
        return phrase
    return with_article(phrase)


def class_instruction(category: str) -> str:
    """The paper's class template: "add a <class>" ("add a cat", "add an apple", "add a baseball bat")."""
    return f"add {class_noun_phrase(category)}"


def location_phrase(location: str | None) -> str:
    """ " at the <location>" for a 3x3-grid cell ("top left" ... "bottom right"); "" for none.

    The trainer appends it to an instruction with probability 0.25 (docs/method.md#instructions); it is never stored."""
    location = (location or "").strip()
    return f" at the {location}" if location else ""


# --------------------------------------------------------------------------------------------
# The embedded rewrite writer

_LEADING_FILLER = re.compile(
    r"^(?:the image shows|this image shows|the picture shows|in the image,?|this is|it is|it's|there is|there's|an image of|a photo of|a picture of)\s+",
    re.IGNORECASE,
)
_SENTENCE_VERB = re.compile(r"\b(?:is|are|was|were|has|have|appears|seems|looks|sits|stands|lies)\b", re.IGNORECASE)


def description_noun_phrase(description: str, category: str) -> str:
    """The description as a noun phrase to put after "add".

    A short phrase that names the class ("a large brown and white cat", "red double-decker bus")
    is used as is (with an article); anything else (a sentence, a phrase without the class) is
    attached to the class phrase: "a cat, orange fur and white paws"."""
    text = _SPACES.sub(" ", (description or "").strip()).strip(" .;:!\"'")
    text = _LEADING_FILLER.sub("", text)
    if not text:
        return class_noun_phrase(category)
    name = clean_category(category).lower()
    sentence = text[0].lower() + text[1:]
    words = sentence.split(" ")
    if words[0] == "the" and len(words) > 1:  # "the red bus" -> "a red bus" (the object is new)
        words = words[1:]
    lowered = " ".join(words)
    names_class = bool(re.search(rf"\b{re.escape(name)}(?:s|es)?\b", lowered.lower())) or (
        name.split(" ")[-1] in {w.strip(",.").lower() for w in words}
    )
    is_phrase = len(words) <= 12 and "," not in lowered and not _SENTENCE_VERB.search(lowered)
    if names_class and is_phrase:
        kind = noun_kind(name)
        if kind in ("plural", "mass") or words[0] in DETERMINERS:
            return lowered
        if kind == "pair" and not lowered.startswith("pair"):
            return f"a pair of {lowered}"
        return with_article(lowered)
    return f"{class_noun_phrase(category)}, {sentence}"


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

"""English for instructions: class names, articles, word forms and noun phrases, in one place.

Used by the class templates and the embedded rewrite writer (pbi_ml/instruct/templates.py), the
instruction check (pbi_ml/instruct/check.py), the referring expressions (pbi_ml/instruct/refs.py),
the pixel describer and the export's removal prompts.

- `clean_category`: a readable class name (COCO "baseball bat", LVIS "bow_(weapon)" -> "bow",
  Open Images "Human face" -> "human face");
- articles: `with_article`, `noun_phrase`, `class_noun_phrase` ("a cat", "an apple", "a pair of
  scissors", "stairs", "broccoli");
- word forms: `name_variants`, every accepted spelling of an object (singular, plural, head noun);
- noun phrases in text: `name_matches` (where the object is named), `name_is_head` (whether the
  name heads its noun phrase or only modifies another noun: "a dog bowl"), `head_noun_phrase`
  (the phrase it heads), `description_noun_phrase` (a description as the phrase after "add").
"""

from __future__ import annotations

import re
from collections.abc import Iterator

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

# Prepositions, copulas and "here" / "there": a noun phrase ends before them (read forwards, after
# its head; read backwards, before its first modifier).
PREPOSITIONS_AND_COPULAS = frozenset(
    """
    with without on in into onto at near next beside behind under over above below beneath between by
    from to toward towards for of across along around against among inside outside
    is are was were be being been has have here there
    """.split()
)

# Compound class names whose last word names a different thing ("hot dog" is no dog).
NO_HEAD_NOUN = frozenset({"hot dog", "teddy bear", "sea lion", "guinea pig", "french fries", "spider man", "egg roll"})

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


def _plural(word: str) -> str:
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def _singulars(word: str) -> set[str]:
    out = set()
    if word in SINGULAR_S:
        return out
    if word.endswith("ies") and len(word) > 4:
        out.add(word[:-3] + "y")
    if word.endswith("ves") and len(word) > 4:
        out.update({word[:-3] + "f", word[:-3] + "fe"})
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh", "o")):
        out.add(word[:-2])
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        out.add(word[:-1])
    return out


def _word_forms(word: str) -> set[str]:
    return {word, _plural(word), *_singulars(word)}


def name_variants(names: list[str]) -> set[str]:
    """Every accepted spelling of the object: each cleaned name and its head noun, singular and plural."""
    variants: set[str] = set()
    for name in names:
        name = clean_category(name).lower()
        if not name:
            continue
        words = name.split(" ")
        for last in _word_forms(words[-1]):
            variants.add(" ".join(words[:-1] + [last]))
            if len(words) > 1 and name not in NO_HEAD_NOUN and len(last) >= 3:
                variants.add(last)
    return variants


# Words that may follow the object's name when the name is the head of its noun phrase:
# prepositions, conjunctions, relative pronouns, copulas and a few adverbs ("add a dog on the
# sofa", "add a cat that is sleeping", "add a dog here"). Words of 5+ letters ending in -ing / -ed
# are taken as participles ("add a dog lying down", "add a bus parked by the road"; not "bed",
# "sled", "wing"); any other word is taken as the noun the name modifies ("add a dog bowl").
# Known blind spot: a noun in -ing ("add a dog painting") passes as a participle.
HEAD_FOLLOWERS = PREPOSITIONS_AND_COPULAS | frozenset(
    """
    besides underneath off up down left right now too also as like
    that which who whose where while when and or but nor so then
    sits stands lies rests
    please
    """.split()
)
# Generic nouns that may follow the name without changing what is added ("add a laptop computer").
GENERIC_HEADS = frozenset({"computer", "vehicle", "animal", "device", "machine", "object", "item"})
_NEXT_WORD = re.compile(r"\s+([a-z]+)")


def name_is_head(text: str, end: int) -> bool:
    """Whether the name that ends at `end` in lower-cased `text` heads its noun phrase (see
    HEAD_FOLLOWERS): it ends the text or a clause, or the next word is not a noun it modifies."""
    rest = text[end:]
    if not rest.strip():
        return True
    if rest[0] == "-" or rest.startswith(("'s", "’s")):
        return False  # "dog-shaped", "dog's"
    if not rest[0].isspace():
        return True  # punctuation: "add a dog, brown and white"
    match = _NEXT_WORD.match(rest)
    if match is None:
        return True  # a number or punctuation follows
    word = match.group(1)
    participle = len(word) >= 5 and word.endswith(("ing", "ed"))
    return word in HEAD_FOLLOWERS or word in GENERIC_HEADS or participle


# Words that end a noun phrase read backwards from its head ("a photo of a brown dog"): with
# DETERMINERS, PREPOSITIONS_AND_COPULAS and "shows" / "showing"; a modifier is a plain word or a comma.
PHRASE_BREAKS = PREPOSITIONS_AND_COPULAS | frozenset({"shows", "showing"})
_MODIFIER = re.compile(r"[a-z][a-z-]*|,")
MAX_MODIFIERS = 6


def name_matches(text: str, names: list[str]) -> Iterator[re.Match]:
    """Every whole-word occurrence in lower-cased `text` of a spelling of the object (one of
    `names`, see `name_variants`); spaces in a name also match hyphens ("double decker" ~
    "double-decker")."""
    for variant in sorted(name_variants(names)):
        pattern = r"[\s\-]+".join(re.escape(part) for part in variant.split(" "))
        yield from re.finditer(rf"(?<![a-z0-9]){pattern}(?![a-z0-9])", text)


def head_noun_phrase(text: str, names: list[str]) -> str | None:
    """The first noun phrase of lower-cased `text` whose head is the object (see `name_is_head`):
    the name as written plus at most MAX_MODIFIERS plain words before it, back to a determiner, a
    preposition or verb, or other punctuation; None when the object heads no phrase.

    "a small brown dog on the grass" -> "small brown dog"; "a photo of a dog bowl" -> None for dog
    (there "dog" only modifies "bowl")."""
    heads = [match for match in name_matches(text, names) if name_is_head(text, match.end())]
    if not heads:
        return None
    head = min(heads, key=lambda match: (match.start(), -match.end()))
    modifiers: list[str] = []
    for word in reversed(text[: head.start()].replace(",", " , ").split()):
        if word in DETERMINERS or word in PHRASE_BREAKS or not _MODIFIER.fullmatch(word):
            break
        modifiers.insert(0, word)
    modifiers = modifiers[-MAX_MODIFIERS:]
    while modifiers and modifiers[0] in (",", "and", "or"):
        modifiers.pop(0)
    while modifiers and modifiers[-1] == ",":
        modifiers.pop()
    return " ".join([*modifiers, head.group(0)]).replace(" ,", ",")


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

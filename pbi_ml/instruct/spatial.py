"""The SPATIAL CHECK (beyond the paper): where a rewrite says the object is must not contradict where
it is. Audits of VLM-written edit instructions find left/right and other position words among their
most frequent errors; this check rejects a rewrite that places its object in the wrong part of the
picture (reason "contradicts_location"), which then falls back to the class template like any other
failed instruction check (pbi_ml/instruct/check.py).

Only phrases that place the object IN THE PICTURE are judged, never relations to another object:

    <on|at|in|to|toward(s)|near|along> [the] [far|very|extreme] <position word> [<position word>]
        [-hand] [<area noun>] [of the <picture noun>]

followed by the end of the text, punctuation, or a word in FOLLOWERS ("with", "and", "holding", ...).
So "in the top left corner", "on the left", "at the bottom of the image", "on the right, facing
left" are judged; "on the left side of the dog", "to the left of the table", "at the top of the
stairs" (relational: "of" another thing), "on the top shelf", "on the upper deck" (the position word
modifies another noun), "looking to the left" (after a word in DIRECTION_WORDS: where it faces) and
"facing left" (no preposition) are not. "foreground" and "background" are
never judged: a box and a 3x3 cell say nothing about depth.

Each position word claims one third of one axis (POSITION_THIRDS); "center"/"centre"/"middle" claims
the middle third of every axis no other word of the phrase names ("top center": top row, middle
column; "in the center" alone: the centre cell). Two words on one axis ("left right") are no claim.
The phrase's claimed cells are the product of the claimed rows and columns:

    left      column 0 (any row)        top, upper      row 0 (any column)
    right     column 2 (any row)        bottom, lower   row 2 (any column)
    center    cell (1, 1)               top left        cell (0, 0); likewise every corner
    top center  cell (0, 1)             center left     cell (1, 0); likewise every edge middle

The object's cells are every 3x3 cell its box touches (the box in image pixels); without a box, the
cell of its `object_location` (the mask's centre of mass, pbi_ml.masks.object_location, which always
lies among the box's cells). A phrase CONTRADICTS the object when every object cell is at least two
cell steps (rows + columns) from every claimed cell. One step is tolerated on purpose: an object in
the middle column "on the left" or touching the centre "in the top left corner" may be described
loosely, but "on the left" for an object wholly in the right third, "at the bottom" for one wholly in
the top third, "in the center" for one wholly inside a corner cell, or "in the top left corner" for
one wholly in the centre cell are wrong.

Pure functions, no model: `phrase_claims` reads the text, `object_cells` places the object,
`location_contradiction` decides.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from pbi_ml.masks import LOCATION_GRID

CONTRADICTS_LOCATION = "contradicts_location"  # the instruction check's reason
SPATIAL_CHECK_VERSION = "1"  # bump when the rule or the word lists change: it redoes checked instructions

# word -> (axis, third): axis "row" (0 top .. 2 bottom) or "col" (0 left .. 2 right)
POSITION_THIRDS = {
    "left": ("col", 0),
    "right": ("col", 2),
    "top": ("row", 0),
    "upper": ("row", 0),
    "bottom": ("row", 2),
    "lower": ("row", 2),
}
CENTRE_WORDS = ("center", "centre", "middle")  # the middle third of every axis the phrase leaves open
PREPOSITIONS = ("on", "at", "in", "to", "toward", "towards", "near", "along")
AREA_NOUNS = ("side", "corner", "edge", "half", "part", "portion", "area", "region", "section", "end")
PICTURE_NOUNS = ("image", "picture", "photo", "photograph", "frame", "scene", "shot", "view")
# a phrase after one of these words is a direction, not a place ("looking to the left")
DIRECTION_WORDS = (
    "facing", "looking", "pointing", "turned", "turning", "leaning", "tilted", "angled",
    "heading", "moving", "walking", "running", "driving", "flying", "swimming", "gazing", "glancing",
)  # fmt: skip
# words that may follow a judged phrase (they start another phrase); any other word (a noun the
# position word modifies, "of" another object) leaves the phrase unjudged
FOLLOWERS = (
    "and", "or", "but", "with", "while", "that", "which", "who", "where", "as",
    "near", "next", "beside", "by", "against", "under", "over", "above", "below", "behind",
    "in", "into", "on", "at", "to", "facing", "looking", "holding", "wearing", "sitting", "standing", "lying",
)  # fmt: skip

_WORD = "|".join((*POSITION_THIRDS, *CENTRE_WORDS))
_PHRASE = re.compile(
    rf"\b(?:{'|'.join(PREPOSITIONS)})\s+(?:the\s+)?(?:(?:far|very|extreme)\s+)?"
    rf"(?P<words>(?:{_WORD})(?:(?:\s+|-)(?:{_WORD}))?)(?:-hand)?"
    rf"(?:\s+(?:{'|'.join(AREA_NOUNS)}))?"
    rf"(?:\s+of\s+(?:the\s+|this\s+)?(?:{'|'.join(PICTURE_NOUNS)})\b)?"
    r"(?P<next>\s+[a-z]+|\s*[^\sa-z]|\s*$)"
)

Cell = tuple[int, int]  # (row, col) of the 3x3 grid


def claimed_cells(words: list[str]) -> frozenset[Cell] | None:
    """The 3x3 cells one phrase's position words place the object in (see the module table);
    None when the words are no claim (two on one axis, "left right")."""
    claim: dict[str, int] = {}
    for word in words:
        if word in POSITION_THIRDS:
            axis, third = POSITION_THIRDS[word]
            if claim.setdefault(axis, third) != third:
                return None
    if any(word in CENTRE_WORDS for word in words):
        for axis in ("row", "col"):
            claim.setdefault(axis, 1)
    rows = [claim["row"]] if "row" in claim else [0, 1, 2]
    cols = [claim["col"]] if "col" in claim else [0, 1, 2]
    return frozenset((r, c) for r in rows for c in cols)


def phrase_claims(text: str) -> list[tuple[str, frozenset[Cell]]]:
    """(phrase, claimed cells) of every phrase in `text` that places the object in the picture."""
    claims = []
    for match in _PHRASE.finditer(text.lower()):
        following = match.group("next").strip()
        if following.isalpha() and following not in FOLLOWERS:
            continue  # "of the dog", "shelf": a relation to, or a part of, something else
        before = text[: match.start()].lower().split()
        if before and before[-1] in DIRECTION_WORDS:
            continue  # "looking to the left": where it faces, not where it is
        cells = claimed_cells(re.split(r"[\s-]+", match.group("words")))
        if cells is not None:
            claims.append((text[match.start() : match.start("next")].strip(), cells))
    return claims


@dataclass(frozen=True)
class ObjectCells:
    """The 3x3 cells an object touches: rows `row0..row1`, columns `col0..col1` (inclusive)."""

    row0: int
    row1: int
    col0: int
    col1: int


def _thirds(start: float, length: float, size: float) -> tuple[int, int]:
    first = min(max(int(3 * start / size), 0), 2)
    last = min(max(math.ceil(3 * (start + length) / size) - 1, first), 2)
    return first, last


def object_cells(
    box: tuple[float, float, float, float] | None, width: int | None, height: int | None, location: str | None
) -> ObjectCells | None:
    """The cells of an object's box (x, y, w, h in pixels of a width x height image); without a box
    (or size), the cell of its 3x3 `location` ("top left" ... "bottom right"); None without either."""
    if box is not None and None not in box and width and height:
        x, y, w, h = box
        (col0, col1), (row0, row1) = _thirds(x, w, width), _thirds(y, h, height)
        return ObjectCells(row0, row1, col0, col1)
    for row, names in enumerate(LOCATION_GRID):
        if location in names:
            col = names.index(location)
            return ObjectCells(row, row, col, col)
    return None


def _steps(cells: ObjectCells, cell: Cell) -> int:
    """Cell steps (rows + columns) from `cell` to the nearest of `cells`."""
    row, col = cell
    return max(cells.row0 - row, row - cells.row1, 0) + max(cells.col0 - col, col - cells.col1, 0)


def location_contradiction(text: str, cells: ObjectCells) -> str | None:
    """The first phrase of `text` that places the object where it is not (every claimed cell two or
    more steps from every object cell), or None."""
    for phrase, claimed in phrase_claims(text):
        if min(_steps(cells, cell) for cell in claimed) >= 2:
            return phrase
    return None

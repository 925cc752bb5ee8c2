"""Referring expressions (RefCOCO / RefCOCO+ / RefCOCOg) as "add" instructions.

Input format: JSON only. A list of records {"ann_id": <COCO annotation id>, "sentences": [...]},
each sentence a string or {"sent": str} (the RefCOCO `refs` records, as JSON); the list may also sit
under a top-level "refs" key. The original distribution is a Python pickle (`refs(unc).p`); pickles
can run code when loaded, so PBI never unpickles a user file. Convert it once yourself, trusting
the file, e.g.:

    import json, pickle
    refs = pickle.load(open("refs(unc).p", "rb"))
    json.dump([{"ann_id": r["ann_id"], "sentences": [s["sent"] for s in r["sentences"]]} for r in refs],
              open("refcoco_unc.json", "w"))

Instruction: the paper's "add a <ref>". A ref that starts with "the" gets the indefinite article instead
("the man on the left" -> "add a man on the left": the object is not in the source image yet, so
"a" reads as an addition); a ref that starts with another determiner keeps it ("two dogs" ->
"add two dogs"); any other ref gets "a"/"an" ("red car" -> "add a red car").
"""

from __future__ import annotations

import json
from pathlib import Path

from pbi_ml.errors import AnnotationFileError
from pbi_ml.instruct.grammar import DETERMINERS, with_article


def load_refs(path: str | Path) -> dict[str, list[str]]:
    """Annotation id (as a string) -> its referring expressions, in file order, without duplicates."""
    path = Path(path)
    if path.suffix.lower() in (".p", ".pkl", ".pickle"):
        raise AnnotationFileError(
            path, "pickle files are never loaded (they can run code); convert to JSON, see pbi_ml/instruct/refs.py"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AnnotationFileError(path, f"cannot read: {exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationFileError(path, f"not valid JSON: {exc}") from None
    if isinstance(data, dict) and "refs" in data:
        data = data["refs"]
    if not isinstance(data, list):
        raise AnnotationFileError(path, "expected a JSON list of {'ann_id', 'sentences'} records")
    refs: dict[str, list[str]] = {}
    for i, record in enumerate(data):
        if not isinstance(record, dict) or "ann_id" not in record or not isinstance(record.get("sentences"), list):
            raise AnnotationFileError(path, f"record {i}: needs 'ann_id' and a 'sentences' list")
        ann_id = record["ann_id"]
        if isinstance(ann_id, bool) or not isinstance(ann_id, (int, str)) or str(ann_id).strip() == "":
            raise AnnotationFileError(path, f"record {i}: ann_id {ann_id!r} is not an id")
        bucket = refs.setdefault(str(ann_id).strip(), [])
        for j, sentence in enumerate(record["sentences"]):
            if isinstance(sentence, dict):
                sentence = sentence.get("sent", sentence.get("raw"))
            if not isinstance(sentence, str):
                raise AnnotationFileError(path, f"record {i}: sentences[{j}] is neither a string nor {{'sent': str}}")
            sentence = " ".join(sentence.split())
            if sentence and sentence not in bucket:
                bucket.append(sentence)
    return {k: v for k, v in refs.items() if v}


def ref_instruction(ref: str) -> str:
    """ "add a <ref>" (see the module docstring for articles)."""
    ref = " ".join(str(ref).split()).strip().rstrip(".")
    if not ref:
        return ""
    first, _, rest = ref.partition(" ")
    if first.lower() == "the" and rest:
        return f"add {with_article(rest)}"
    if first.lower() in DETERMINERS:
        return f"add {ref}"
    return f"add {with_article(ref)}"

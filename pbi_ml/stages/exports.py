"""The exports stage: every pair of every partition as Hugging Face Parquet datasets, per split.

Three file sets: the PIPE release schema (source_img, target_img, Instruction_VLM-LLM,
Instruction_Class, Instruction_Ref_Dataset, object_location, target_img_dataset, img_id, ann_id;
masks in a separate table); diffusers' train_instruct_pix2pix.py schema (input_image,
edit_prompt, edited_image, plus pair_id and mask); and the reverse removal pairs in that schema
(remove_pix2pix: the original, "remove the ...", the object removed). Sharded by size, with a
README.md dataset card (one `datasets` config per file set, counts, classes, filter statistics).
The pairs `splits` left out (split "excluded": judge score under `min_judge_score`) are not
exported; the card counts them.
"""

from __future__ import annotations

from collections import Counter

import pyarrow.compute as pc

from pbi_ml.catalog import read_view
from pbi_ml.config import ProjectConfig
from pbi_ml.export import ExportConfig, export_pairs
from pbi_ml.splits import EXCLUDED
from pbi_ml.stages.common import Progress, StageResult
from pbi_ml.storage import Storage
from pbi_ml.tables import CANDIDATES, PAIRS, REMOVAL_SCORES


def filter_statistics(storage: Storage) -> dict[str, dict[str, int]]:
    """Outcome counts of the candidate filters and the removal filters, for the dataset card."""
    candidates = read_view(storage, CANDIDATES.name).select(["kept", "reject_reason"]).to_pylist()
    scores = (
        read_view(storage, REMOVAL_SCORES.name)
        .select(["annotation_id", "source", "passed", "chosen", "reject_reason", "status", "error"])
        .to_pylist()
    )
    cand = Counter("kept" if r["kept"] else r["reject_reason"] for r in candidates)
    removal = Counter()
    for r in scores:
        if r["status"] != "ok":
            removal[f"object failed: {r['error']}"] += 1
        elif not r["passed"]:
            for reason in (r["reject_reason"] or "unknown").split("+"):
                removal[f"candidate rejected: {reason}"] += 1
        if r["chosen"]:
            removal["objects with a chosen candidate"] += 1
    objects = {(r["source"], r["annotation_id"]) for r in scores}
    removal["objects scored"] = len(objects)
    return {"pre-removal filters (instances)": dict(cand), "removal filters": dict(removal)}


def run_exports(
    storage: Storage, config: ExportConfig, *, project: ProjectConfig, progress: Progress | None = None
) -> StageResult:
    """Every ok pair of every partition; `project` names each source's format (for the card)."""
    ok = read_view(storage, PAIRS.name, where="status = 'ok'")
    pairs = ok.filter((pc.field("split") != EXCLUDED) | pc.field("split").is_null())
    stats = filter_statistics(storage)
    if excluded := ok.num_rows - pairs.num_rows:
        stats["pair judge"] = {"pairs excluded (judge score under min_judge_score)": excluded}
    formats = {s.name: s.format for s in project.sources}
    result = export_pairs(pairs, formats, stats, storage.global_dir("exports"), config)
    counts = {"pairs": pairs.num_rows, "pairs_excluded_by_judge": excluded, "files": len(result.files), **result.counts}
    return StageResult(table=pairs, path=result.directory, counts=counts, extra={"files": result.files})

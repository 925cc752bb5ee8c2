"""The exports stage: every pair of every partition as Hugging Face Parquet datasets."""

from __future__ import annotations

from collections import Counter

from pbi_ml.catalog import read_view
from pbi_ml.config import ProjectConfig
from pbi_ml.export import ExportConfig, export_pairs
from pbi_ml.stages.common import StageResult
from pbi_ml.storage import Storage


def filter_statistics(storage: Storage) -> dict[str, dict[str, int]]:
    """Outcome counts of the candidate filters and the removal filters, for the dataset card."""
    candidates = read_view(storage, "candidates").select(["kept", "reject_reason"]).to_pylist()
    scores = (
        read_view(storage, "removal_scores")
        .select(["annotation_id", "source", "passed", "chosen", "reject_reason"])
        .to_pylist()
    )
    cand = Counter("kept" if r["kept"] else r["reject_reason"] for r in candidates)
    removal = Counter()
    for r in scores:
        if not r["passed"]:
            for reason in (r["reject_reason"] or "unknown").split("+"):
                removal[f"candidate rejected: {reason}"] += 1
        if r["chosen"]:
            removal["objects with a chosen candidate"] += 1
    objects = {(r["source"], r["annotation_id"]) for r in scores}
    removal["objects scored"] = len(objects)
    return {"pre-removal filters (instances)": dict(cand), "removal filters": dict(removal)}


def run_exports(storage: Storage, project: ProjectConfig, config: ExportConfig) -> StageResult:
    pairs = read_view(storage, "pairs")
    formats = {s.name: s.format for s in project.sources}
    result = export_pairs(pairs, formats, filter_statistics(storage), storage.global_dir("exports"), config)
    counts = {"pairs": pairs.num_rows, "files": len(result.files), **result.counts}
    return StageResult(table=pairs, path=result.directory, counts=counts, extra={"files": result.files})

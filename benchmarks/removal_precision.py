"""How clean are the removals the embedded default keeps? Precision and recall on hand labels.

    .venv/bin/python benchmarks/removal_precision.py --data ../shared/data [--work /tmp/pbi-removal-precision]

benchmarks/labels/removal_labels_<set>.csv hold removal candidates labelled by eye (label 1: a
person would accept the image as a photo with the object gone; 0: a smear, a leftover of the object
or a blob, with the reason), from the photo sets of `--data` (coco128seg_50, labelme_voc). The
benchmark runs the embedded default (opencv removal, stats scores) on those sets into `--work`,
recomputing every candidate's scores and hole radius, and applies the keep rule
(`pbi_ml.scoring.decide`: one chosen candidate per object, the pair) twice on the same scores:

    before  the thresholds on main before the labels (stats 0.12 / 0.25 / 0.02 / 0.25), no hole limit
    after   today's ScoringConfig defaults (the thresholds fitted on the labels, the hole limit)

and prints, per rule, the pairs kept among the labelled objects, the precision (share of kept pairs
labelled clean) and the recall (share of the labelled objects with a clean candidate that keep a
clean pair); before them, how many objects have a clean candidate per hole-radius range. It also
writes <work>/labels_scored.csv (the labels with their scores and hole radius) for `pbi calibrate
fit`. Without the photo sets it says so and exits 0.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LABELS = ROOT / "benchmarks" / "labels"
BEFORE = {
    "stats_max_consensus_std": 0.12,
    "stats_max_boundary_contrast": 0.25,
    "stats_min_change": 0.02,
    "stats_min_texture_ratio": 0.25,
    "telea_max_hole_radius_px": None,
    "ns_max_hole_radius_px": None,
}


def scored_candidates(data: Path, work: Path, sets: list[str]) -> pd.DataFrame:
    """Every removal candidate of `sets` scored by the embedded default with no hole limit (so each
    has its scores and its hole radius): one row per candidate."""
    from pbi_ml.config import (
        CandidateConfig,
        ClassFilterConfig,
        ProjectConfig,
        RemovalConfig,
        ScoringConfig,
        SourceConfig,
        SourceIndexConfig,
    )
    from pbi_ml.stages.candidates import run_candidates
    from pbi_ml.stages.class_scores import run_class_scores
    from pbi_ml.stages.removals import run_removals
    from pbi_ml.stages.scores import run_scores
    from pbi_ml.stages.source_index import run_source_index
    from pbi_ml.storage import Storage

    storage = Storage(work)
    project = ProjectConfig(data_root=str(work), num_shards=1)
    unlimited = ScoringConfig(telea_max_hole_radius_px=None, ns_max_hole_radius_px=None)
    tables = []
    for name in sets:
        source = SourceConfig(
            name=name,
            format="coco",
            images=str(data / name / "images"),
            annotations=str(data / name / "annotations.json"),
        )
        for shard in project.shard_keys:
            run_source_index(storage, source, shard, SourceIndexConfig(num_shards=project.num_shards))
            run_candidates(storage, source, shard, CandidateConfig())
            run_class_scores(storage, source, shard, ClassFilterConfig())
            run_removals(storage, source, shard, RemovalConfig())
            tables.append(run_scores(storage, source, shard, unlimited).table.to_pandas())
    return pd.concat(tables, ignore_index=True)


def keep_rule(scores: pd.DataFrame, labels: pd.DataFrame, overrides: dict) -> dict:
    """The keep rule of a ScoringConfig (the defaults with `overrides`) on the labelled objects."""
    from pbi_ml.config import ScoringConfig
    from pbi_ml.scoring import decide

    config = ScoringConfig(**overrides)
    label_of = {(r.source, r.annotation_id, r.candidate): r.label for r in labels.itertuples()}
    by_object: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in scores.to_dict("records"):
        if (row["source"], row["annotation_id"], row["candidate"]) in label_of:
            by_object[(row["source"], row["annotation_id"])].append(row)
    kept, clean_kept, reasons = 0, 0, defaultdict(int)
    for (source, annotation_id), rows in by_object.items():
        for row in decide(rows, config):
            if row["chosen"]:
                kept += 1
                clean_kept += label_of[(source, annotation_id, row["candidate"])]
            elif row["reject_reason"]:
                for reason in row["reject_reason"].split("+"):
                    reasons[reason] += 1
    clean_objects = labels[labels.label == 1].groupby(["source", "annotation_id"]).ngroups
    return {
        "objects": len(by_object),
        "kept": kept,
        "clean_kept": clean_kept,
        "precision": clean_kept / kept if kept else float("nan"),
        "clean_objects": clean_objects,
        "recall": clean_kept / clean_objects if clean_objects else float("nan"),
        "rejections": dict(sorted(reasons.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--work", type=Path, default=Path("/tmp/pbi-removal-precision"))
    args = parser.parse_args()

    files = sorted(LABELS.glob("removal_labels_*.csv"))
    labels = pd.concat([pd.read_csv(f, dtype={"annotation_id": str, "image_id": str}) for f in files])
    sets = sorted(labels.source.unique())
    missing = [name for name in sets if not (args.data / name / "annotations.json").exists()]
    if missing:
        print(f"skipped: the labelled photo sets {missing} are not under {args.data} (--data); nothing measured")
        return 0
    print(f"labels: {len(labels)} candidates of {labels.groupby(['source', 'annotation_id']).ngroups} objects")
    for name, group in labels.groupby("source"):
        print(f"  {name}: {len(group)} candidates, {int(group.label.sum())} clean, {int((group.label == 0).sum())} not")
    scores = scored_candidates(args.data, args.work, sets)
    from pbi_ml.calibration import KEEP_ABOVE, KEEP_BELOW
    from pbi_ml.config import ScoringConfig

    # the labels with today's scores, for `pbi calibrate fit <work>/labels_scored.csv --column ...`
    columns = [
        "source",
        "annotation_id",
        "candidate",
        "hole_radius_px",
        *sorted((KEEP_ABOVE | KEEP_BELOW) & set(scores)),
    ]
    scored = labels.merge(scores[columns], on=["source", "annotation_id", "candidate"], how="left")
    scored.to_csv(args.work / "labels_scored.csv", index=False)
    print(f"labels with their scores: {args.work / 'labels_scored.csv'}")
    objects = scored.groupby(["source", "annotation_id"]).agg(
        clean=("label", "max"), radius=("hole_radius_px", "first")
    )
    edges = [0, 32, 48, 64, 96, float("inf")]
    print("objects with a clean candidate, by hole radius (px):")
    for low, high in zip(edges[:-1], edges[1:], strict=True):
        group = objects[(objects.radius > low) & (objects.radius <= high)]
        print(f"  ({low:g}, {high:g}]: {int(group.clean.sum())} of {len(group)}")

    after = {k: getattr(ScoringConfig(), k) for k in BEFORE}
    print(f"{'rule':<7} {'objects':>7} {'kept':>5} {'clean':>5} {'precision':>9} {'recall':>7}  settings")
    for name, overrides in (("before", BEFORE), ("after", after)):
        r = keep_rule(scores, labels, overrides)
        print(
            f"{name:<7} {r['objects']:>7} {r['kept']:>5} {r['clean_kept']:>5} {r['precision']:>9.1%} "
            f"{r['recall']:>7.1%}  {overrides}"
        )
        print(f"        rejected candidates by reason: {r['rejections']}")
    print(
        "precision: kept pairs labelled clean / kept pairs; recall: kept clean pairs / labelled objects with a clean candidate"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

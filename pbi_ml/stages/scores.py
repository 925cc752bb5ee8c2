"""The filter-score stage: score every removal candidate, decide which pass, choose one per object.

One row per removal candidate with the paper's three filters (docs/method.md#removal-filters) (consensus across candidates, removal
verification against the class, importance of the edit), `passed`, `reject_reason` and `chosen`
(at most one per object: the passing candidate with the lowest removal score). Every object with
an ok removal enters; one whose original, mask or removal PNGs cannot be read gets one failed row
with the reason. Runs through the item-stage mechanism (`item_stage.py`): chunks of `batch_size`
objects, whatever K is. Backend `stats` (embedded: pixel statistics, the CLIP columns null with
the reason) or `clip` (open_clip). Before scoring, a candidate whose removal method cannot fill a
hole as wide as the object's (`hole_radius_px` over its `<method>_max_hole_radius_px`) is set
aside: no scores, rejected as `hole_too_large_for_inpainter`.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from pbi_ml.config import ScoringConfig, SourceConfig
from pbi_ml.devices import device_of
from pbi_ml.imageio import load_rgb_path
from pbi_ml.masks import dilate, hole_radius_px, load_image_and_mask
from pbi_ml.scoring.base import SCORES_VERSION
from pbi_ml.scoring.clip import CLIP_VIEW_VERSION
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, portable, run_item_stage
from pbi_ml.stages.removals import INSTANCE_FIELDS, OBJECT_FIELDS, instance_inputs
from pbi_ml.storage import Storage
from pbi_ml.tables import CANDIDATES, REMOVAL_SCORES, REMOVALS

# what a candidate's scores depend on, from its removals row
REMOVAL_FIELDS = ("candidate", "method", "removal_image", "dilation_px", "config_id", "output_digest")
CANDIDATE_FIELDS = ("source", "shard", "image_id", "annotation_id", "category", "candidate", "method", "removal_image")


class ScoreStage(ItemStage):
    table = REMOVAL_SCORES

    def __init__(self, storage: Storage, source: SourceConfig, shard: str, config: ScoringConfig):
        self.storage, self.source, self.shard, self.config = storage, source, shard, config
        self.batch_size = config.batch_size
        self.config_id = fingerprint(config, exclude=("batch_size", "device")) + f"-scores{SCORES_VERSION}"
        if config.backend == "clip":
            self.config_id += f"-{CLIP_VIEW_VERSION}"
        self.device = device_of(config)

    def items(self) -> list[StageItem]:
        removals = self.storage.read_table(REMOVALS, self.source.name, self.shard).to_pylist()
        candidates = {
            r["annotation_id"]: r for r in self.storage.read_table(CANDIDATES, self.source.name, self.shard).to_pylist()
        }
        by_object: dict[str, list[dict]] = defaultdict(list)
        for row in removals:
            if row["status"] == "ok":
                by_object[row["annotation_id"]].append(row)
        items = []
        for ann_id, rows in by_object.items():  # in the removals table's (fixed) order
            rows.sort(key=lambda r: r["candidate"])
            instance = candidates[ann_id]
            items.append(
                StageItem(
                    key=ann_id,
                    row={"instance": instance, "removals": rows},
                    upstream=fingerprint_of(
                        {k: instance.get(k) for k in INSTANCE_FIELDS},
                        portable(self.storage, [{k: r[k] for k in REMOVAL_FIELDS} for r in rows]),
                    ),
                    input_files=(*instance_inputs(self.source, instance), *(r["removal_image"] for r in rows)),
                )
            )
        return items

    def prepare(self, item: StageItem):
        from pbi_ml.scoring import ObjectToScore, check_object

        instance, rows = item.row["instance"], item.row["removals"]
        original, mask = load_image_and_mask(self.source, instance)
        obj = ObjectToScore(
            original=original,
            mask=mask,
            dilated_mask=dilate(mask, rows[0]["dilation_px"]),
            candidates=[load_rgb_path(r["removal_image"]) for r in rows],
            category=instance["category"],
        )
        check_object(obj)
        radius = hole_radius_px(obj.dilated_mask)
        too_wide = [self.config.hole_too_large(r["method"], radius) for r in rows]
        # a candidate whose method cannot fill a hole this wide is not scored (decide rejects it)
        obj.candidates = [c for c, wide in zip(obj.candidates, too_wide, strict=True) if not wide]
        return obj, radius, too_wide

    def compute(self, prepared: list) -> list:
        from pbi_ml.scoring import SCORE_COLUMNS, score_objects

        scorable = [obj for obj, _, _ in prepared if obj.candidates]
        scored = iter(score_objects(scorable, self.config) if scorable else [])
        results = []
        for obj, radius, too_wide in prepared:
            scores = iter(next(scored) if obj.candidates else [])
            unscored = dict.fromkeys(SCORE_COLUMNS)
            results.append([{**(unscored if wide else next(scores)), "hole_radius_px": radius} for wide in too_wide])
        return results

    def write(self, item: StageItem, result: list[dict], directory: Path) -> ItemOutput:
        from pbi_ml.scoring import decide

        merged = [
            {**{k: r[k] for k in CANDIDATE_FIELDS}, **s} for r, s in zip(item.row["removals"], result, strict=True)
        ]
        decided = decide(merged, self.config)
        for row in decided:
            row["scoring_backend"] = self.config.backend
            row["status"] = "ok"
            row["error"] = None
        # the candidate's own fields (its path among them) come back from the upstream rows in `rows`
        kept = [{k: v for k, v in row.items() if k == "candidate" or k not in CANDIDATE_FIELDS} for row in decided]
        return ItemOutput(data={"rows": kept})

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        removals = {r["candidate"]: r for r in item.row["removals"]}
        return [
            {**{k: removals[row["candidate"]][k] for k in CANDIDATE_FIELDS}, **row} for row in record["data"]["rows"]
        ]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        instance = item.row["instance"]
        return [
            {
                **{k: instance[k] for k in OBJECT_FIELDS},
                "candidate": -1,
                "scoring_backend": self.config.backend,
                "passed": False,
                "chosen": False,
                "status": "failed",
                "error": record["error"],
            }
        ]

    def counts(self, rows: list[dict]) -> dict:
        objects = {r["annotation_id"] for r in rows if r["status"] == "ok"}
        chosen = sum(1 for r in rows if r.get("chosen"))
        counts: dict[str, int] = {
            "objects_scored": len(objects),
            "objects_with_a_passing_candidate": chosen,
            "objects_without_a_passing_candidate": len(objects) - chosen,
            "candidates": sum(1 for r in rows if r["status"] == "ok"),
        }
        for r in rows:
            if r["status"] == "ok" and not r.get("passed"):
                for reason in (r.get("reject_reason") or "unknown").split("+"):
                    counts[f"rejected_{reason}"] = counts.get(f"rejected_{reason}", 0) + 1
        return counts


def run_scores(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: ScoringConfig,
    *,
    progress: Progress | None = None,
) -> StageResult:
    """Score the removal candidates of one partition; writes tables/removal_scores/<source>/<shard>.parquet."""
    return run_item_stage(storage, ScoreStage(storage, source, shard, config), source.name, shard, progress)

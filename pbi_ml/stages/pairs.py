"""The pairs stage: blend each object's chosen candidate into the original photo.

For every object with a chosen candidate, writes four lossless PNGs:

    source.png  the object-removed image (the model's INPUT): alpha-blend of the chosen candidate
                and the original through the feathered dilated mask; outside the dilated mask it
                equals the original exactly, pixel for pixel
    target.png  the original photo at the same size (the model's TARGET)
    mask.png    the object's mask;  edit_mask.png  the dilated mask (where source may differ)

and one row with the box, area fraction, 3x3 `object_location`, file paths and the chosen
candidate's scores; an object whose files cannot be read gets a failed row with the reason. Runs
through the item-stage mechanism (`item_stage.py`), one object per chunk (no model here).
"""

from __future__ import annotations

from pathlib import Path

from pbi_ml import reasons
from pbi_ml.config import PairConfig, SourceConfig
from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_rgb_path, save_png
from pbi_ml.masks import blend, dilate, feathered_alpha, load_image_and_mask, object_location
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, absolute_files, portable, run_item_stage
from pbi_ml.stages.removals import INSTANCE_FIELDS, instance_inputs
from pbi_ml.storage import Storage
from pbi_ml.tables import CANDIDATES, PAIRS, REMOVAL_SCORES, REMOVALS, SCORE_COLUMNS

PAIR_FILES = ("source", "target", "mask", "edit_mask")
INSTANCE_COLUMNS = (
    "source",
    "shard",
    "image_id",
    "annotation_id",
    "category",
    "category_id",
    "category_synonyms",
    "width",
    "height",
    "bbox_x",
    "bbox_y",
    "bbox_w",
    "bbox_h",
    "area_fraction",
)


def pair_id(source: str, image_id: str, annotation_id: str) -> str:
    return f"{source}/{image_id}/{annotation_id}"


class PairStage(ItemStage):
    table = PAIRS
    batch_size = 1

    def __init__(self, storage: Storage, source: SourceConfig, shard: str, config: PairConfig):
        self.storage, self.source, self.shard, self.config = storage, source, shard, config
        self.config_id = fingerprint(config)

    def items(self) -> list[StageItem]:
        name = self.source.name
        chosen = [r for r in self.storage.read_table(REMOVAL_SCORES, name, self.shard).to_pylist() if r["chosen"]]
        candidates = {r["annotation_id"]: r for r in self.storage.read_table(CANDIDATES, name, self.shard).to_pylist()}
        removals = {}
        for r in self.storage.read_table(REMOVALS, name, self.shard).to_pylist():
            removals.setdefault(r["annotation_id"], r)
        items = []
        for score in chosen:
            ann_id = score["annotation_id"]
            instance, removal = candidates[ann_id], removals[ann_id]
            items.append(
                StageItem(
                    key=pair_id(name, instance["image_id"], ann_id),
                    row={"instance": instance, "score": score, "removal": removal},
                    upstream=fingerprint_of(
                        {k: instance.get(k) for k in INSTANCE_FIELDS},
                        portable(self.storage, score),
                        {k: removal[k] for k in ("dilation_px", "backend", "output_digest")},
                    ),
                    input_files=(*instance_inputs(self.source, instance), score["removal_image"]),
                )
            )
        return items

    def prepare(self, item: StageItem):
        original, mask = load_image_and_mask(self.source, item.row["instance"])
        inpainted = load_rgb_path(item.row["score"]["removal_image"])
        if inpainted.shape != original.shape:
            raise ItemError(reasons.REMOVAL_SIZE_MISMATCH, f"{inpainted.shape} vs {original.shape}")
        return original, mask, inpainted

    def write(self, item: StageItem, result, directory: Path) -> ItemOutput:
        original, mask, inpainted = result
        dilated = dilate(mask, item.row["removal"]["dilation_px"])
        removed = blend(original, inpainted, feathered_alpha(mask, dilated, self.config.feather_sigma))
        images = {"source": removed, "target": original, "mask": mask, "edit_mask": dilated}
        files = {name: save_png(images[name], directory / f"{name}.png") for name in PAIR_FILES}
        return ItemOutput(files=files, data={"object_location": object_location(mask)})

    def _base(self, item: StageItem, record: dict) -> dict:
        instance, score = item.row["instance"], item.row["score"]
        return {
            "pair_id": item.key,
            **{k: instance[k] for k in INSTANCE_COLUMNS},
            "candidate": score["candidate"],
            "method": score["method"],
            "removal_backend": item.row["removal"]["backend"],
            "scoring_backend": score["scoring_backend"],
            **{k: score.get(k) for k in SCORE_COLUMNS},
            "status": record["status"],
            "error": record["error"],
            "output_digest": record["output_digest"],
        }

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        files = absolute_files(self.storage, record)
        return [
            {
                **self._base(item, record),
                "object_location": record["data"]["object_location"],
                "source_image": files["source"],
                "target_image": files["target"],
                "mask": files["mask"],
                "edit_mask": files["edit_mask"],
            }
        ]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return [self._base(item, record)]

    def sample(self, item: StageItem, record: dict):
        category, files = item.row["instance"]["category"], absolute_files(self.storage, record)
        return [
            (f"{category}: without", load_rgb_path(files["source"])),
            (f"{category}: original", load_rgb_path(files["target"])),
        ]

    def counts(self, rows: list[dict]) -> dict:
        return {"pairs": sum(1 for r in rows if r["status"] == "ok")}


def run_pairs(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: PairConfig,
    *,
    progress: Progress | None = None,
) -> StageResult:
    """Blend the chosen candidates of one partition; writes tables/pairs/<source>/<shard>.parquet."""
    return run_item_stage(storage, PairStage(storage, source, shard, config), source.name, shard, progress)

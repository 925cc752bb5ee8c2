"""The descriptions stage: what each removed object looks like, one text per pair.

The describer sees the ORIGINAL photo with everything but the object masked out (docs/method.md#descriptions: CogVLM with
"Accurately describe the main characteristics of the <class>..."). Backends: `pixels` (embedded
default: colour names, size and shape measured under the mask) or `vlm` (transformers
image-text-to-text). Every ok pair enters; runs through the item-stage mechanism
(`item_stage.py`), so a resumed run writes the same texts and a re-made pair is described again.
"""

from __future__ import annotations

from pathlib import Path

from pbi_ml import reasons
from pbi_ml.config import SourceConfig
from pbi_ml.describe.base import DescribeConfig
from pbi_ml.devices import device_of
from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_mask_png, load_rgb_path
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of, ok_pairs
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, portable, run_item_stage
from pbi_ml.storage import Storage
from pbi_ml.tables import DESCRIPTIONS

PAIR_FIELDS = ("pair_id", "source", "shard", "image_id", "annotation_id", "category")
# what a description depends on, from its pairs row
UPSTREAM_FIELDS = ("pair_id", "category", "target_image", "mask", "output_digest")


class DescriptionStage(ItemStage):
    table = DESCRIPTIONS

    def __init__(self, storage: Storage, source: SourceConfig, shard: str, config: DescribeConfig, describer=None):
        self.storage, self.source, self.shard, self.config = storage, source, shard, config
        self.batch_size = config.batch_size
        self.config_id = fingerprint(config, exclude=("batch_size", "device"))
        self.device = device_of(config)
        self.model = config.model if config.backend == "vlm" else None
        self._describer = describer

    def items(self) -> list[StageItem]:
        return [
            StageItem(
                key=row["pair_id"],
                row=row,
                upstream=fingerprint_of(portable(self.storage, {k: row[k] for k in UPSTREAM_FIELDS})),
                input_files=(row["target_image"], row["mask"]),
            )
            for row in ok_pairs(self.storage, self.source.name, self.shard)
        ]

    def prepare(self, item: StageItem):
        from pbi_ml.describe import DescribeItem

        row = item.row
        return DescribeItem(
            image=load_rgb_path(row["target_image"]), mask=load_mask_png(row["mask"]), category=row["category"]
        )

    def compute(self, prepared: list) -> list:
        if self._describer is None:
            from pbi_ml.describe import make_describer

            self._describer = make_describer(self.config)
        texts = self._describer.describe(prepared)
        return [
            (text or "").strip() or ItemError(reasons.EMPTY_DESCRIPTION, "the describer returned no text")
            for text in texts
        ]

    def write(self, item: StageItem, result: str, directory: Path) -> ItemOutput:
        return ItemOutput(data={"description": result})

    def _base(self, item: StageItem, record: dict) -> dict:
        return {
            **{k: item.row[k] for k in PAIR_FIELDS},
            "describe_backend": self.config.backend,
            "describe_model": self.model,
            "status": record["status"],
            "error": record["error"],
        }

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        return [dict(self._base(item, record), description=record["data"]["description"])]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return [dict(self._base(item, record), description=None)]

    def counts(self, rows: list[dict]) -> dict:
        return {"pairs": len(rows), "described": sum(1 for r in rows if r["description"])}


def run_descriptions(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: DescribeConfig,
    *,
    progress: Progress | None = None,
    describer=None,
) -> StageResult:
    """Describe the pairs of one partition; writes tables/descriptions/<source>/<shard>.parquet."""
    stage = DescriptionStage(storage, source, shard, config, describer)
    return run_item_stage(storage, stage, source.name, shard, progress)

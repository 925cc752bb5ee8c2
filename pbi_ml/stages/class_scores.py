"""The class-similarity stage: the paper's third pre-removal filter, before any inpainting.

Paint by Inpaint (§3.1, Fig. 4a, Fig. S14) drops candidates whose segmented object looks little
like its class name: a blurred or occluded, uninformative view. Per kept candidate, the object is
isolated as the scoring stage isolates a region (pasted on the image's mean colour through a
dilated, Gaussian-blurred mask, cropped around it) and compared by CLIP with "a photo of a <class>".

    clip_class_sim   the cosine of the two embeddings (null with `clip_null_reason` when skipped)
    passed           clip_class_sim >= min_class_sim; null when the filter was skipped

Backend `off` (the embedded default: there are no CLIP weights) skips the filter and says so in
every row; `clip` is the paper's recipe. The removal stage takes the kept candidates whose row
did not fail (`passed` true or null). Runs through the item-stage mechanism (`item_stage.py`).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from pbi_ml.config import ClassFilterConfig, SourceConfig
from pbi_ml.devices import device_of
from pbi_ml.masks import load_image_and_mask
from pbi_ml.scoring.clip import CLIP_VIEW_VERSION
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, run_item_stage
from pbi_ml.stages.removals import INSTANCE_FIELDS, OBJECT_FIELDS, instance_inputs
from pbi_ml.storage import Storage
from pbi_ml.tables import CANDIDATES, CLASS_SCORES

SKIPPED_REASON = "class filter backend 'off' (no CLIP weights): filter skipped; set class_scores.backend: clip"


class ClassScoreStage(ItemStage):
    table = CLASS_SCORES

    def __init__(self, storage: Storage, source: SourceConfig, shard: str, config: ClassFilterConfig, embedder=None):
        self.storage, self.source, self.shard, self.config = storage, source, shard, config
        self.batch_size = config.batch_size
        self.config_id = fingerprint(config, exclude=("batch_size", "device"))
        if config.backend == "clip":
            self.config_id += f"-{CLIP_VIEW_VERSION}"
        self.device = device_of(config)
        self._embedder = embedder

    def items(self) -> list[StageItem]:
        candidates = self.storage.read_table(CANDIDATES, self.source.name, self.shard)
        kept = candidates.filter(pc.field("kept")).to_pylist()
        return [
            StageItem(
                key=row["annotation_id"],
                row=row,
                upstream=fingerprint_of({k: row.get(k) for k in INSTANCE_FIELDS}),
                input_files=instance_inputs(self.source, row) if self.config.backend == "clip" else (),
            )
            for row in kept
        ]

    def prepare(self, item: StageItem):
        if self.config.backend == "off":
            return None  # nothing to read: the filter is skipped
        from pbi_ml.scoring.clip import class_prompt, isolated_region

        image, mask = load_image_and_mask(self.source, item.row)
        view = isolated_region(image, mask, self.config.isolation_dilation_px, self.config.isolation_blur_sigma)
        return view, class_prompt(item.row["category"])

    def compute(self, prepared: list) -> list:
        if self.config.backend == "off":
            return [{"clip_class_sim": None, "clip_null_reason": SKIPPED_REASON, "passed": None} for _ in prepared]
        from pbi_ml.scoring.clip import SCORE_DECIMALS, cached_embedder

        if self._embedder is None:
            config = self.config
            self._embedder = cached_embedder(
                config.clip_model, config.clip_pretrained or None, config.device, config.batch_size
            )
        views = [view for view, _ in prepared]
        prompts = sorted({prompt for _, prompt in prepared})
        image_emb = self._embedder.embed_images(views)
        text_emb = dict(zip(prompts, self._embedder.embed_texts(prompts), strict=True))
        out = []
        for emb, (_, prompt) in zip(image_emb, prepared, strict=True):
            sim = round(float(emb.astype("float64") @ text_emb[prompt].astype("float64")), SCORE_DECIMALS)
            out.append({"clip_class_sim": sim, "clip_null_reason": None, "passed": sim >= self.config.min_class_sim})
        return out

    def write(self, item: StageItem, result: dict, directory: Path) -> ItemOutput:
        return ItemOutput(data=result)

    def _base(self, item: StageItem, record: dict) -> dict:
        return {
            **{k: item.row[k] for k in OBJECT_FIELDS},
            "min_class_sim": self.config.min_class_sim,
            "class_backend": self.config.backend,
            "status": record["status"],
            "error": record["error"],
        }

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        return [{**self._base(item, record), **record["data"]}]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return [self._base(item, record)]

    def counts(self, rows: list[dict]) -> dict:
        return {
            "objects_passed": sum(1 for r in rows if r.get("passed") is True),
            "rejected_low_class_similarity": sum(1 for r in rows if r.get("passed") is False),
            "objects_filter_skipped": sum(1 for r in rows if r["status"] == "ok" and r.get("passed") is None),
        }


def run_class_scores(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: ClassFilterConfig,
    *,
    progress: Progress | None = None,
    embedder=None,
) -> StageResult:
    """Score the kept candidates of one partition; writes tables/class_scores/<source>/<shard>.parquet."""
    stage = ClassScoreStage(storage, source, shard, config, embedder)
    return run_item_stage(storage, stage, source.name, shard, progress)


def rejected_ids(storage: Storage, source: str, shard: str) -> set[str]:
    """Annotation ids the class filter rejected. (An object the filter could not score, e.g. its
    image is gone, is not rejected here: the removal stage records that failure with its reason.)"""
    rows = storage.read_table(CLASS_SCORES, source, shard).select(["annotation_id", "passed"]).to_pylist()
    return {r["annotation_id"] for r in rows if r["passed"] is False}

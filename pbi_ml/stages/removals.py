"""The removal stage: inpaint K times every kept candidate that the class filter did not reject.

Masks are dilated first. Backend `opencv` (embedded, CPU: Telea / Navier-Stokes at several radii)
or `diffusers` (the paper's recipe: an SD inpainting model, "a photo of a background, a photo of
an empty place", negative "an object, a <class>", seeds seed + k).

Per object, the K inpainted images are PNG files at deterministic paths
(files/removals/<source>/<shard>/<annotation_id>/cand<k>.png). Objects are ordered by image size
(so one pipeline batch holds one working size) and then by annotation id, and run through the
item-stage mechanism (`item_stage.py`: resume, fixed chunks of `batch_size` objects, failure rows).
An object whose image or mask is broken gets one `failed` row with its reason.
`batch_size` is left out of the config id (changing it does not redo finished work), so change it
between runs of one partition only if byte-identity with an earlier run does not matter.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from pbi_ml.config import RemovalConfig, SourceConfig
from pbi_ml.devices import device_of
from pbi_ml.imageio import load_rgb_path, save_png
from pbi_ml.masks import dilate, load_image_and_mask
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, run_item_stage
from pbi_ml.storage import Storage
from pbi_ml.tables import CANDIDATES, REMOVALS

# the candidate-row fields an object's removal depends on (its upstream fingerprint)
INSTANCE_FIELDS = ("image_file", "width", "height", "category", "segmentation", "mask_file", "index_error")
OBJECT_FIELDS = ("source", "shard", "image_id", "annotation_id", "category")


# fields the opencv backend does not read (changing them must not redo its work)
DIFFUSERS_ONLY_FIELDS = (
    "model",
    "steps",
    "guidance_scale",
    "resolution",
    "prompt",
    "negative_prompt",
    "dtype",
    "context",
    "min_context_px",
    "context_scale",
    "compile",
)


def removal_config_id(config: RemovalConfig) -> str:
    """What changes a removal's pixels. batch_size and device do not (the stage runs fixed
    chunks; a device computes what another does, up to the GPU's kernels); for opencv neither do
    the diffusers-only fields. `compile` does count: a compiled UNet need not give the same bytes."""
    skip = ("batch_size", "device") + (DIFFUSERS_ONLY_FIELDS if config.backend == "opencv" else ())
    return fingerprint(config, exclude=skip)


def instance_inputs(source: SourceConfig, row: dict) -> tuple[str, ...]:
    """The files an instance's image and mask are read from (for retrying failed items)."""
    files = [str(Path(source.images) / str(row["image_file"]))]
    if row.get("mask_file") and source.masks:
        files.append(str(Path(source.masks) / str(row["mask_file"])))
    return tuple(files)


class RemovalStage(ItemStage):
    table = REMOVALS

    def __init__(self, storage: Storage, source: SourceConfig, shard: str, config: RemovalConfig, inpainter=None):
        self.storage, self.source, self.shard, self.config = storage, source, shard, config
        self.batch_size = config.batch_size
        self.config_id = removal_config_id(config)
        self.device = device_of(config)
        self._inpainter = inpainter

    @property
    def inpainter(self):
        if self._inpainter is None:
            from pbi_ml.removal import make_inpainter

            self._inpainter = make_inpainter(self.config)
        return self._inpainter

    def items(self) -> list[StageItem]:
        from pbi_ml.stages.class_scores import rejected_ids

        candidates = self.storage.read_table(CANDIDATES, self.source.name, self.shard)
        rejected = rejected_ids(self.storage, self.source.name, self.shard)
        kept = [row for row in candidates.filter(pc.field("kept")).to_pylist() if row["annotation_id"] not in rejected]
        kept.sort(key=lambda row: (row["height"], row["width"], row["annotation_id"]))
        return [
            StageItem(
                key=row["annotation_id"],
                row=row,
                upstream=fingerprint_of({k: row.get(k) for k in INSTANCE_FIELDS}),
                input_files=instance_inputs(self.source, row),
            )
            for row in kept
        ]

    def prepare(self, item: StageItem):
        image, mask = load_image_and_mask(self.source, item.row)
        return image, dilate(mask, self.config.dilation_px), item.row["category"]

    def compute(self, prepared: list) -> list:
        images, masks, categories = (list(x) for x in zip(*prepared, strict=True))
        contexts = [self.inpainter.context_of(image, mask) for image, mask in zip(images, masks, strict=True)]
        return list(zip(self.inpainter.inpaint(images, masks, categories), contexts, strict=True))

    def write(self, item: StageItem, result: tuple[list[np.ndarray], str], directory: Path) -> ItemOutput:
        images, context = result
        labels = self.inpainter.candidate_labels()
        files = {f"cand{k}": save_png(image, directory / f"cand{k}.png") for k, image in enumerate(images)}
        return ItemOutput(files=files, data={"methods": [labels[k] for k in range(len(images))], "context": context})

    def _base(self, item: StageItem, record: dict) -> dict:
        return {
            **{k: item.row[k] for k in OBJECT_FIELDS},
            "backend": self.config.backend,
            "config_id": record["config_id"],
            "dilation_px": self.config.dilation_px,
            "status": record["status"],
            "error": record["error"],
            "output_digest": record["output_digest"],
        }

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        base = self._base(item, record)
        methods = record["data"]["methods"]
        return [
            dict(
                base,
                candidate=k,
                method=methods[k],
                context=record["data"].get("context"),
                removal_image=str(self.storage.root / record["files"][f"cand{k}"]["path"]),
            )
            for k in range(len(methods))
        ]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return [dict(self._base(item, record), candidate=-1)]

    def sample(self, item: StageItem, record: dict):
        return [
            (
                f"{item.key} {record['data']['methods'][0]}",
                load_rgb_path(self.storage.root / record["files"]["cand0"]["path"]),
            )
        ]

    def counts(self, rows: list[dict]) -> dict:
        return {"candidates": sum(1 for r in rows if r["status"] == "ok")}


def run_removals(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: RemovalConfig,
    *,
    progress: Progress | None = None,
    inpainter=None,
) -> StageResult:
    """Inpaint the kept candidates of one partition; writes tables/removals/<source>/<shard>.parquet."""
    return run_item_stage(
        storage, RemovalStage(storage, source, shard, config, inpainter), source.name, shard, progress
    )

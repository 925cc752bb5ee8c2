"""The pairs stage: blend each object's chosen candidate into the original photo.

For every object with a chosen candidate, writes three lossless PNGs:

    source.png  the object-removed image (the model's INPUT): alpha-blend of the chosen candidate
                and the original through the feathered dilated mask; outside the dilated mask it
                equals the original exactly, pixel for pixel
    target.png  the original photo at the same size (the model's TARGET)
    mask.png    the object's mask;  edit_mask.png  the dilated mask (where source may differ)

and one row with the box, area fraction, 3x3 `object_location`, file paths and the chosen
candidate's scores.
"""

from __future__ import annotations

import pyarrow as pa

from pbi_ml.config import PairConfig, SourceConfig
from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_rgb, load_rgb_path, save_png
from pbi_ml.masks import blend, dilate, feathered_alpha, object_location
from pbi_ml.sources import decode_mask
from pbi_ml.stages.common import Progress, ProgressReporter, StageResult, fingerprint
from pbi_ml.storage import Storage, table_from_records

STAGE = "pairs"


def pair_id(source: str, image_id: str, annotation_id: str) -> str:
    return f"{source}/{image_id}/{annotation_id}"


def pair_schema() -> pa.Schema:
    from pbi_ml.scoring import SCORE_FIELDS

    return pa.schema(
        [
            ("pair_id", pa.string()),
            ("source", pa.string()),
            ("shard", pa.string()),
            ("image_id", pa.string()),
            ("annotation_id", pa.string()),
            ("category", pa.string()),
            ("category_id", pa.string()),
            ("category_synonyms", pa.list_(pa.string())),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("bbox_x", pa.float64()),
            ("bbox_y", pa.float64()),
            ("bbox_w", pa.float64()),
            ("bbox_h", pa.float64()),
            ("area_fraction", pa.float64()),
            ("object_location", pa.string()),
            ("source_image", pa.string()),  # object removed (model input)
            ("target_image", pa.string()),  # original photo (model target)
            ("mask", pa.string()),
            ("edit_mask", pa.string()),
            ("candidate", pa.int32()),
            ("method", pa.string()),
            ("removal_backend", pa.string()),
            ("scoring_backend", pa.string()),
            *SCORE_FIELDS,
        ]
    )


def run_pairs(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: PairConfig,
    progress: Progress | None = None,
) -> StageResult:
    from pbi_ml.scoring import SCORE_COLUMNS

    scores = [r for r in storage.read_table("removal_scores", source.name, shard).to_pylist() if r["chosen"]]
    candidates = {r["annotation_id"]: r for r in storage.read_table("candidates", source.name, shard).to_pylist()}
    removal_rows = {r["annotation_id"]: r for r in storage.read_table("removals", source.name, shard).to_pylist()}
    config_id = fingerprint(config)

    rows, failures, samples = [], {}, []
    reporter = ProgressReporter(len(scores), progress)
    for chosen in scores:
        ann_id = chosen["annotation_id"]
        cand = candidates[ann_id]
        directory = storage.file_dir(STAGE, source.name, shard, ann_id)
        paths = {name: directory / f"{name}.png" for name in ("source", "target", "mask", "edit_mask")}
        record = storage.read_item_record(STAGE, source.name, shard, ann_id)
        fresh = (
            record is not None
            and record.get("config_id") == config_id
            and record.get("removal_image") == chosen["removal_image"]
            and record.get("removal_config_id") == removal_rows[ann_id]["config_id"]
            and all(p.exists() for p in paths.values())
        )
        try:
            if fresh:
                location = record["object_location"]
            else:
                original = load_rgb(source.images, cand["image_file"])
                mask = decode_mask(cand, source)
                inpainted = load_rgb_path(chosen["removal_image"])
                if inpainted.shape != original.shape:
                    raise ItemError("removal_size_mismatch", f"{inpainted.shape} vs {original.shape}")
                dilated = dilate(mask, removal_rows[ann_id]["dilation_px"])
                removed = blend(original, inpainted, feathered_alpha(mask, dilated, config.feather_sigma))
                save_png(removed, paths["source"])
                save_png(original, paths["target"])
                save_png(mask, paths["mask"])
                save_png(dilated, paths["edit_mask"])
                location = object_location(mask)
                storage.write_item_record(
                    STAGE,
                    source.name,
                    shard,
                    ann_id,
                    {
                        "config_id": config_id,
                        "removal_config_id": removal_rows[ann_id]["config_id"],
                        "removal_image": chosen["removal_image"],
                        "object_location": location,
                    },
                )
                if len(samples) < 3:
                    samples.append((f"{cand['category']} removed", removed))
        except ItemError as exc:
            failures[ann_id] = exc.reason
            reporter.advance()
            continue
        row = {
            "pair_id": pair_id(source.name, cand["image_id"], ann_id),
            **{
                k: cand[k]
                for k in (
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
            },
            "object_location": location,
            "source_image": str(paths["source"]),
            "target_image": str(paths["target"]),
            "mask": str(paths["mask"]),
            "edit_mask": str(paths["edit_mask"]),
            "candidate": chosen["candidate"],
            "method": chosen["method"],
            "removal_backend": removal_rows[ann_id]["backend"],
            "scoring_backend": chosen["scoring_backend"],
            **{k: chosen.get(k) for k in SCORE_COLUMNS},
        }
        rows.append(row)
        reporter.advance()

    table = table_from_records(rows, pair_schema())
    path = storage.write_table(STAGE, source.name, shard, table)
    counts = {"pairs": len(rows), "failed": len(failures)}
    for reason in set(failures.values()):
        counts[f"failed_{reason}"] = sum(1 for v in failures.values() if v == reason)
    return StageResult(table=table, path=path, counts=counts, samples=samples)

"""Exports: the pairs as Hugging Face-loadable Parquet datasets, in two schemas.

    <out>/pipe/data/<split>-00000-of-0000N.parquet     the PIPE release schema
    <out>/pipe/masks/<split>-00000-of-0000N.parquet    masks keyed by (target_img_dataset, img_id, ann_id)
    <out>/instruct_pix2pix/data/<split>-....parquet    diffusers' train_instruct_pix2pix.py schema
    <out>/README.md                                     dataset card: counts, classes, filter statistics

Images are embedded as Hugging Face `Image` features (struct<bytes, path> with the `huggingface`
schema metadata), so `datasets.load_dataset("parquet", data_files=...)` decodes them. Shards are
cut by size; the whole export is written to a temp folder and swapped into place.

The InstructPix2Pix export has one row per pair and non-empty instruction kind (class template,
VLM-LLM rewrite, referring expression), without location phrases: diffusers' script cannot
append them at training time the way our trainer does (p = 0.25).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

PIPE_SCHEMA = pa.schema(
    [
        ("source_img", IMAGE_TYPE),
        ("target_img", IMAGE_TYPE),
        ("Instruction_VLM-LLM", pa.string()),
        ("Instruction_Class", pa.string()),
        ("Instruction_Ref_Dataset", pa.string()),
        ("object_location", pa.string()),
        ("target_img_dataset", pa.string()),
        ("img_id", pa.string()),
        ("ann_id", pa.string()),
    ]
)
PIPE_MASK_SCHEMA = pa.schema(
    [("target_img_dataset", pa.string()), ("img_id", pa.string()), ("ann_id", pa.string()), ("mask", IMAGE_TYPE)]
)
IP2P_SCHEMA = pa.schema([("input_image", IMAGE_TYPE), ("edit_prompt", pa.string()), ("edited_image", IMAGE_TYPE)])


@dataclass(frozen=True)
class ExportConfig:
    max_shard_bytes: int = 256 * 1024 * 1024
    formats: tuple[str, ...] = ("pipe", "instruct_pix2pix")


@dataclass
class ExportResult:
    directory: Path
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)


def with_hf_features(schema: pa.Schema) -> pa.Schema:
    """Attach the `huggingface` metadata that makes `datasets` decode image columns as Image."""
    features = {}
    for f in schema:
        features[f.name] = {"_type": "Image"} if f.type == IMAGE_TYPE else {"dtype": "string", "_type": "Value"}
    return schema.with_metadata({"huggingface": json.dumps({"info": {"features": features}})})


def dataset_name(source: str, source_format: str) -> str:
    """PIPE's `target_img_dataset`: "COCO" for COCO-family sources, "OpenImages", else the source name."""
    name = source.lower()
    if source_format == "openimages" or name.startswith("openimages"):
        return "OpenImages"
    if name.startswith(("coco", "lvis")):
        return "COCO"
    return source


def _image(path: str) -> dict:
    return {"bytes": Path(path).read_bytes(), "path": Path(path).name}


class _ShardWriter:
    """Writes rows into `<dir>/<split>-XXXXX.parquet.part` files, cut by size; `finish` names them -of-N."""

    def __init__(self, directory: Path, split: str, schema: pa.Schema, max_bytes: int):
        self.directory, self.split, self.schema, self.max_bytes = directory, split, with_hf_features(schema), max_bytes
        self.rows: list[dict] = []
        self.size = 0
        self.parts: list[Path] = []
        directory.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict, nbytes: int) -> None:
        if self.rows and self.size + nbytes > self.max_bytes:
            self._flush()
        self.rows.append(row)
        self.size += nbytes

    def _flush(self) -> None:
        table = pa.Table.from_pylist(self.rows, schema=self.schema)
        part = self.directory / f"{self.split}-{len(self.parts):05d}.parquet.part"
        pq.write_table(table, part, compression="zstd", row_group_size=256)
        self.parts.append(part)
        self.rows, self.size = [], 0

    def finish(self) -> list[Path]:
        if self.rows or not self.parts:
            self._flush()
        n = len(self.parts)
        final = []
        for i, part in enumerate(self.parts):
            target = self.directory / f"{self.split}-{i:05d}-of-{n:05d}.parquet"
            part.rename(target)
            final.append(target)
        return final


def export_pairs(
    pairs: pa.Table, formats_of_sources: dict[str, str], stats: dict, out_dir: Path, config: ExportConfig
) -> ExportResult:
    """Write the export for `pairs` (the catalog's joined pairs view: files, instructions, split).

    `formats_of_sources`: source name -> its format (for PIPE's target_img_dataset).
    `stats`: filter statistics for the dataset card ({"candidates": {...}, "scores": {...}}).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    rows = sorted(pairs.to_pylist(), key=lambda r: r["pair_id"])
    counts: Counter = Counter()
    writers: dict[tuple[str, str], _ShardWriter] = {}

    def writer(kind: str, split: str, schema: pa.Schema) -> _ShardWriter:
        key = (kind, split)
        if key not in writers:
            writers[key] = _ShardWriter(tmp / kind, split, schema, config.max_shard_bytes)
        return writers[key]

    for row in rows:
        split = row.get("split") or "train"
        source_img, target_img = _image(row["source_image"]), _image(row["target_image"])
        size = len(source_img["bytes"]) + len(target_img["bytes"])
        dataset = dataset_name(row["source"], formats_of_sources.get(row["source"], "coco"))
        vlm = row.get("instruction_vlm_llm") or ""
        cls = row.get("instruction_class") or ""
        ref = row.get("instruction_ref") or ""
        if "pipe" in config.formats:
            writer("pipe/data", split, PIPE_SCHEMA).add(
                {
                    "source_img": source_img,
                    "target_img": target_img,
                    "Instruction_VLM-LLM": vlm,
                    "Instruction_Class": cls,
                    "Instruction_Ref_Dataset": ref,
                    "object_location": row["object_location"],
                    "target_img_dataset": dataset,
                    "img_id": str(row["image_id"]),
                    "ann_id": str(row["annotation_id"]),
                },
                size,
            )
            mask = _image(row["mask"])
            writer("pipe/masks", split, PIPE_MASK_SCHEMA).add(
                {
                    "target_img_dataset": dataset,
                    "img_id": str(row["image_id"]),
                    "ann_id": str(row["annotation_id"]),
                    "mask": mask,
                },
                len(mask["bytes"]),
            )
            counts[f"pipe_{split}"] += 1
        if "instruct_pix2pix" in config.formats:
            for prompt in dict.fromkeys(p for p in (vlm, cls, ref) if p):  # unique, in order
                writer("instruct_pix2pix/data", split, IP2P_SCHEMA).add(
                    {"input_image": source_img, "edit_prompt": prompt, "edited_image": target_img}, size
                )
                counts[f"instruct_pix2pix_{split}"] += 1

    files = []
    for w in writers.values():
        files += [str(p.relative_to(tmp)) for p in w.finish()]
    (tmp / "README.md").write_text(dataset_card(rows, stats, counts))
    _swap_into_place(tmp, out_dir)
    return ExportResult(directory=out_dir, files=sorted(files), counts=dict(counts))


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    old = out_dir.with_name(out_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)


def dataset_card(rows: list[dict], stats: dict, counts: Counter) -> str:
    per_source = Counter((r["source"], r.get("split") or "train") for r in rows)
    classes = Counter(r["category"] for r in rows)
    checks = Counter(r.get("instruction_check") or "n/a" for r in rows)
    lines = [
        "---",
        "configs:",
        "- config_name: pipe",
        "  data_files:",
    ]
    for split in sorted({r.get("split") or "train" for r in rows}) or ["train"]:
        lines += [f"  - split: {split}", f"    path: pipe/data/{split}-*.parquet"]
    lines += ["- config_name: pipe_masks", "  data_files:"]
    for split in sorted({r.get("split") or "train" for r in rows}) or ["train"]:
        lines += [f"  - split: {split}", f"    path: pipe/masks/{split}-*.parquet"]
    lines += ["- config_name: instruct_pix2pix", "  data_files:"]
    for split in sorted({r.get("split") or "train" for r in rows}) or ["train"]:
        lines += [f"  - split: {split}", f"    path: instruct_pix2pix/data/{split}-*.parquet"]
    lines += [
        "---",
        "",
        "# PBI object-addition pairs",
        "",
        "Made by PBI (Paint by Inpaint pipeline): each object was removed by inpainting, the removal",
        "filtered, and the pair reversed: `source_img` (object removed) + instruction -> `target_img` (original).",
        "",
        "## Counts",
        "",
        "| source | split | pairs |",
        "|---|---|---|",
    ]
    lines += [f"| {s} | {sp} | {n} |" for (s, sp), n in sorted(per_source.items())]
    lines += ["", "| file set | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in sorted(counts.items())]
    lines += ["", "## Classes", "", "| class | pairs |", "|---|---|"]
    lines += [f"| {c} | {n} |" for c, n in classes.most_common(100)]
    if len(classes) > 100:
        lines.append(f"| ... {len(classes) - 100} more | |")
    lines += ["", "## Filter statistics", ""]
    for section, values in stats.items():
        lines += [f"### {section}", "", "| outcome | count |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(values.items())]
        lines.append("")
    lines += ["### instruction check (VLM-LLM rewrites)", "", "| outcome | pairs |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(checks.items())]
    lines += ["", "Loading: `datasets.load_dataset('parquet', data_files={'train': 'pipe/data/train-*.parquet'})`.", ""]
    return "\n".join(lines)

"""Exports: the pairs as Hugging Face-loadable Parquet datasets, in three schemas.

    <out>/pipe/data/<split>-00000-of-0000N.parquet     the PIPE release schema
    <out>/pipe/masks/<split>-00000-of-0000N.parquet    masks keyed by (target_img_dataset, img_id, ann_id)
    <out>/instruct_pix2pix/data/<split>-....parquet    diffusers' train_instruct_pix2pix.py schema ("add")
    <out>/remove_pix2pix/data/<split>-....parquet      the same schema, the reverse pair ("remove")
    <out>/README.md                                     dataset card: `configs:` (one per file set; the
                                                        `datasets` loader reads them), counts, classes,
                                                        filter statistics

diffusers' script loads a folder with `--dataset_name <out>/instruct_pix2pix/data` (split `train`
from the file names) or `--dataset_name <out> --dataset_config_name instruct_pix2pix` (the card's
configs); `--train_data_dir` builds an imagefolder dataset, which skips Parquet files.

Images are embedded as Hugging Face `Image` features (struct<bytes, path> with the `huggingface`
schema metadata), so `datasets.load_dataset("parquet", data_files=...)` decodes them. Shards are
cut by size; the whole export is written to a temp folder and swapped into place.

The InstructPix2Pix export has one row per pair and non-empty instruction kind (class template,
VLM-LLM rewrite, referring expression), without location phrases: diffusers' script cannot
append them at training time the way our trainer does (p = 0.25). The removal export has one row
per pair: the original -> "remove the ..." -> the object-removed image, the prompt chosen per pair
by `ExportConfig.seed` between "remove the <class>" and the description's noun phrase
(`pbi_ml.instruct.templates.removal_prompt`). Both carry `pair_id` and the object `mask` (an Image) in every row;
diffusers' script reads only its three columns.
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

from pbi_ml.config.fields import check_fields
from pbi_ml.instruct.templates import removal_prompt

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
# diffusers' default column names first (--original_image_column, --edit_prompt_column, --edited_image_column)
IP2P_SCHEMA = pa.schema(
    [
        ("input_image", IMAGE_TYPE),
        ("edit_prompt", pa.string()),
        ("edited_image", IMAGE_TYPE),
        ("pair_id", pa.string()),
        ("mask", IMAGE_TYPE),
    ]
)
REMOVE_SCHEMA = IP2P_SCHEMA  # input_image = the original, edited_image = the object removed
FORMATS = ("pipe", "instruct_pix2pix", "remove_pix2pix")


@dataclass(frozen=True)
class ExportConfig:
    """The Hugging Face Parquet exports of the pairs (see pbi_ml/export.py)."""

    max_shard_bytes: int = 256 * 1024 * 1024  # a Parquet file is cut when the next row would pass this size
    formats: tuple[str, ...] = FORMATS  # which file sets to write: pipe, instruct_pix2pix, remove_pix2pix
    seed: int = 0  # picks each pair's removal prompt (class or description form) in remove_pix2pix

    def __post_init__(self):
        check_fields(self, max_shard_bytes="positive", formats=FORMATS, seed="non_negative")


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
        mask = _image(row["mask"])
        pair_id = str(row["pair_id"])
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
                    {
                        "input_image": source_img,
                        "edit_prompt": prompt,
                        "edited_image": target_img,
                        "pair_id": pair_id,
                        "mask": mask,
                    },
                    size + len(mask["bytes"]),
                )
                counts[f"instruct_pix2pix_{split}"] += 1
        if "remove_pix2pix" in config.formats:
            prompt = removal_prompt(pair_id, row.get("description"), row.get("category") or "", config.seed)
            if prompt:
                writer("remove_pix2pix/data", split, REMOVE_SCHEMA).add(
                    {
                        "input_image": target_img,
                        "edit_prompt": prompt,
                        "edited_image": source_img,
                        "pair_id": pair_id,
                        "mask": mask,
                    },
                    size + len(mask["bytes"]),
                )
                counts[f"remove_pix2pix_{split}"] += 1

    # a file set without rows gets no (empty) shard and no card config: `datasets` cannot read a
    # zero-row Parquet file ("BatchSize must be greater than 0"), nor a config whose files are absent
    files = []
    for w in writers.values():
        files += [str(p.relative_to(tmp)) for p in w.finish()]
    splits_of: dict[str, set[str]] = {}
    for kind, split in writers:
        splits_of.setdefault(kind, set()).add(split)
    (tmp / "README.md").write_text(dataset_card(rows, stats, counts, splits_of))
    _swap_into_place(tmp, out_dir)
    return ExportResult(directory=out_dir, files=sorted(files), counts=dict(counts))


# the card's config name of each file set; instruct_pix2pix is the default config, so
# `load_dataset(<export root>)` (diffusers' --dataset_name without --dataset_config_name) loads it
CONFIG_NAMES = {
    "pipe/data": "pipe",
    "pipe/masks": "pipe_masks",
    "instruct_pix2pix/data": "instruct_pix2pix",
    "remove_pix2pix/data": "remove_pix2pix",
}
DEFAULT_CONFIG = "instruct_pix2pix"


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


def dataset_card(rows: list[dict], stats: dict, counts: Counter, splits_of: dict[str, set[str]] | None = None) -> str:
    """README.md of the export: YAML front matter with one `datasets` config per file set written
    (`splits_of`: folder -> its splits; default: every pair's split in all file sets), then counts,
    classes, filter statistics and how to load each config."""
    per_source = Counter((r["source"], r.get("split") or "train") for r in rows)
    classes = Counter(r["category"] for r in rows)
    checks = Counter(r.get("instruction_check") or "n/a" for r in rows)
    if splits_of is None:
        all_splits = {r.get("split") or "train" for r in rows} or {"train"}
        splits_of = {kind: all_splits for kind in CONFIG_NAMES}
    configs: list[str] = []
    for kind, config_name in CONFIG_NAMES.items():
        if kind not in splits_of:
            continue
        configs += [f"- config_name: {config_name}"]
        if config_name == DEFAULT_CONFIG:
            configs += ["  default: true"]
        configs += ["  data_files:"]
        for split in sorted(splits_of[kind]):
            configs += [f"  - split: {split}", f"    path: {kind}/{split}-*.parquet"]
    lines = ["---", "configs:", *configs, "---", ""] if configs else ["_No pairs exported yet._", ""]
    lines += [
        "# PBI object-addition pairs",
        "",
        "Made by PBI (Paint by Inpaint pipeline): each object was removed by inpainting, the removal",
        "filtered, and the pair reversed: `source_img` (object removed) + instruction -> `target_img` (original).",
        "",
        "## Configs",
        "",
        "| config | folder | columns |",
        "|---|---|---|",
    ]
    columns = {
        "pipe/data": "PIPE release schema: " + ", ".join(f"`{n}`" for n in PIPE_SCHEMA.names),
        "pipe/masks": "masks keyed by (`target_img_dataset`, `img_id`, `ann_id`): `mask`",
        "instruct_pix2pix/data": "add: `input_image` (object removed), `edit_prompt` (an 'add' instruction), "
        "`edited_image` (original), `pair_id`, `mask`; one row per distinct instruction",
        "remove_pix2pix/data": "remove (the reverse pair): `input_image` (original), `edit_prompt` "
        "('remove the ...'), `edited_image` (object removed), `pair_id`, `mask`; one row per pair",
    }
    lines += [
        f"| `{name}`{' (default)' if name == DEFAULT_CONFIG else ''} | `{kind}/` | {columns[kind]} |"
        for kind, name in CONFIG_NAMES.items()
        if kind in splits_of
    ]
    lines += [
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
    lines += [
        "",
        "## Loading",
        "",
        "`datasets.load_dataset('<this folder>', '<config>', split='train')`, or one folder alone:",
        "`datasets.load_dataset('<this folder>/instruct_pix2pix/data', split='train')`. diffusers'",
        "`train_instruct_pix2pix.py` takes `--dataset_name <this folder>/instruct_pix2pix/data` or",
        "`--dataset_name <this folder> --dataset_config_name instruct_pix2pix` (not `--train_data_dir`:",
        "that builds an imagefolder dataset, which skips Parquet files).",
        "",
    ]
    return "\n".join(lines)

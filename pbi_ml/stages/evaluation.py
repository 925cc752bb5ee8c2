"""The evaluation stage: generate edits with a checkpoint and score them (MagicBrush protocol).

Benchmarks:
    pipe_test          our test split (the paper's PIPE test = 752 COCO-val pairs); it has
                       no target captions, so clip_t is null there (the paper reports none either)
    magicbrush_add     a MagicBrush-format parquet (one row per turn: img_id, turn_index,
                       source_img, instruction, target_img; the source of turn k is the ground
                       truth of turn k - 1, MagicBrush's "all turns" / single-turn setting), when
                       configured, restricted to the "add" subset (`is_magicbrush_add`), with the
                       target's local caption from `magicbrush_captions` (MagicBrush's
                       local_captions.json) for CLIP-T

The "add" subset rule (docs/method.md#magicbrush-add-subset: instructions containing "add" or "put" and neither "remove" nor
"and"), read as Python's `in` on the lower-cased instruction: SUBSTRINGS ("adding", "puts",
"removed" count; so do "ladder", "computer", and "hand" / "stand" exclude), applied to EVERY turn
(each turn is its own input -> target triple; a session's final turn alone would leave out most
add edits). The published count is 144 on MagicBrush's test set (535 sessions, 1,053 turns); the
test set is distributed only as a password-protected zip, so the reading could not be checked
against it here: the stage reports `magicbrush_turns`, `magicbrush_add_substring` and
`magicbrush_add_word` (whole words) in its counts so a run on the real file shows which reading
gives 144, and `magicbrush_add_rule: word` switches the reading.

Inference: the paper's settings (EulerAncestral, 50 steps, text guidance 7, image guidance 1.5, seed 0).
The edits are made by `EditStage`, an item stage per (benchmark, checkpoint) (table
`evaluation_edits`): a killed evaluation resumes where it stopped, and evaluating the same
checkpoint (same id and steps) with the same generation settings again makes no edit and writes no
PNG; the metrics are computed again from the stored edits.
Metrics: see `pbi_ml.evaluate.metrics` (each computed as its reference computes it). Metrics whose
weights are absent are null with the reason. One summary row per (benchmark, checkpoint) and one
row per sample.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pbi_ml.catalog import read_view
from pbi_ml.config.fields import check_fields
from pbi_ml.devices import DTYPES, device_of
from pbi_ml.errors import ConfigError, ItemError
from pbi_ml.imageio import load_rgb_path, save_png
from pbi_ml.reasons import IMAGE_UNREADABLE
from pbi_ml.stages.common import Progress, StageResult, fingerprint, fingerprint_of
from pbi_ml.stages.item_stage import ItemOutput, ItemStage, StageItem, absolute_files, portable, run_item_stage
from pbi_ml.storage import Storage, table_from_records
from pbi_ml.tables import (
    EVALUATION_EDITS,
    EVALUATION_METRICS,
    EVALUATION_SAMPLES,
    EVALUATIONS,
    PAIRS,
    SAMPLE_METRICS,
)

METRICS = EVALUATION_METRICS  # float columns, each with a <metric>_null_reason column
MAGICBRUSH_ADD_RULES = ("substring", "word")


@dataclass(frozen=True)
class EvaluationConfig:
    """How the evaluation stage edits with a checkpoint and scores the edits (see the module docstring)."""

    instruction_kind: str = "vlm_llm"  # vlm_llm | class | ref: which stored instruction drives the edit
    max_samples: int | None = None  # the first N samples of each benchmark; None: all
    magicbrush_parquet: str | None = None  # a MagicBrush-format parquet: adds the magicbrush_add benchmark
    # MagicBrush's local_captions.json, {img_id: {"<img_id>-output<k>.png": caption}}: CLIP-T's captions
    magicbrush_captions: str | None = None
    magicbrush_add_rule: str = "substring"  # or "word": how "contains" is read (see the module docstring)
    num_inference_steps: int = 50  # EulerAncestral steps
    guidance_scale: float = 7.0  # text guidance
    image_guidance_scale: float = 1.5
    seed: int = 0  # the generator's seed for every edit
    resolution: int | None = None  # None: 512 for real models, 64 for a smoke model
    batch_size: int = 4  # edits per pipeline call
    device: str = "auto"  # "auto" = a leased device of the node (pbi_ml.devices), else cuda if available, else cpu
    dtype: str = "auto"  # "auto" = bfloat16 on a GPU that has it (else float16), float32 on cpu
    clip_model: str = "ViT-B-32"  # CLIP-I / CLIP-T: open_clip name or model-config JSON path
    clip_pretrained: str = "openai"  # open_clip tag or checkpoint file
    dino_model: str = "facebook/dino-vits16"  # DINO: Hub id or local directory (transformers ViTModel)
    cmmd_clip_model: str = "ViT-L-14-336"  # CMMD's CLIP (google-research/cmmd's)
    cmmd_clip_pretrained: str = "openai"
    cmmd_batch_size: int = 32  # google-research/cmmd: batches of 32, remainder dropped

    def __post_init__(self):
        check_fields(
            self,
            instruction_kind=("vlm_llm", "class", "ref"),
            magicbrush_add_rule=MAGICBRUSH_ADD_RULES,
            max_samples="positive",
            num_inference_steps="positive",
            guidance_scale="non_negative",
            image_guidance_scale="non_negative",
            resolution="positive",
            batch_size="positive",
            dtype=DTYPES,
            cmmd_batch_size="positive",
        )


_WORD = re.compile(r"[a-z]+")


def is_magicbrush_add(instruction: str, rule: str = "substring") -> bool:
    """The MagicBrush "add" subset: the instruction contains "add" or "put" and neither "remove"
    nor "and", lower-cased; `rule` "substring" (Python's `in`) or "word" (whole words)."""
    text = (instruction or "").lower()
    if rule == "word":
        words = set(_WORD.findall(text))
        return bool(words & {"add", "put"}) and not (words & {"remove", "and"})
    if rule != "substring":
        raise ConfigError(f"magicbrush add rule {rule!r} is not one of {MAGICBRUSH_ADD_RULES}")
    return ("add" in text or "put" in text) and "remove" not in text and "and" not in text


def _subset(config, cls):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dataclasses.asdict(config).items() if k in names})


def pipe_test_samples(storage: Storage, config: EvaluationConfig) -> list[dict]:
    rows = read_view(storage, PAIRS.name, where="split = 'test'").to_pylist()
    samples = []
    for row in sorted(rows, key=lambda r: r["pair_id"]):
        instruction = row.get(f"instruction_{config.instruction_kind}") or row.get("instruction_class")
        samples.append(
            {
                "sample_id": row["pair_id"],
                "instruction": instruction,
                "caption": None,  # PIPE test pairs have no caption of the target
                "input": row["source_image"],
                "target": row["target_image"],
                "digest": row.get("output_digest"),  # the pair's files: a re-made pair is edited again
            }
        )
    return samples[: config.max_samples] if config.max_samples else samples


def load_magicbrush_captions(path: str) -> dict[str, dict[str, str]]:
    """MagicBrush's local_captions.json: {img_id: {target file name: caption}}."""
    try:
        captions = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"magicbrush_captions {path}: not readable JSON: {exc}") from None
    if not isinstance(captions, dict) or not all(isinstance(v, dict) for v in captions.values()):
        raise ConfigError(f"magicbrush_captions {path}: expected {{img_id: {{file name: caption}}}}")
    return captions


def magicbrush_caption(captions: dict[str, dict[str, str]], img_id: str, turn_index: int) -> str | None:
    """The local caption of turn `turn_index`'s target, `<img_id>-output<turn>.png` (the file name
    MagicBrush's image_eval.py looks up), or None."""
    per_image = captions.get(str(img_id)) or {}
    exact = per_image.get(f"{img_id}-output{turn_index}.png")
    if exact:
        return exact
    suffix = f"output{turn_index}.png"
    return next((c for name, c in sorted(per_image.items()) if name.endswith(suffix) and c), None)


def magicbrush_samples(path: str, config: EvaluationConfig, counts: dict | None = None) -> list[dict]:
    """The "add" subset of a MagicBrush-format parquet, one sample per turn; `counts` (when given)
    receives the number of turns and the subset's size under both readings of the rule."""
    table = pq.read_table(path)
    missing = {"source_img", "target_img", "instruction"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: MagicBrush parquet lacks columns {sorted(missing)}")
    captions = load_magicbrush_captions(config.magicbrush_captions) if config.magicbrush_captions else None
    rows = table.to_pylist()
    if counts is not None:
        counts["magicbrush_turns"] = len(rows)
        for rule in MAGICBRUSH_ADD_RULES:
            counts[f"magicbrush_add_{rule}"] = sum(is_magicbrush_add(r["instruction"], rule) for r in rows)
    samples = []
    for i, row in enumerate(rows):
        if not is_magicbrush_add(row["instruction"], config.magicbrush_add_rule):
            continue
        img_id, turn = row.get("img_id", i), row.get("turn_index", 1)
        samples.append(
            {
                "sample_id": f"{img_id}-{turn}",
                "instruction": row["instruction"],
                "caption": magicbrush_caption(captions, img_id, turn) if captions is not None else None,
                "input": row["source_img"],
                "target": row["target_img"],
            }
        )
    return samples[: config.max_samples] if config.max_samples else samples


def _decode(value) -> np.ndarray:
    if isinstance(value, str):
        return load_rgb_path(value)
    data = value["bytes"] if isinstance(value, dict) else value
    try:
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ItemError(IMAGE_UNREADABLE, f"embedded image: {exc}") from None


class EditStage(ItemStage):
    """The edits one checkpoint makes of one benchmark's inputs, through the item mechanism
    (`run_item_stage`, partition = (benchmark, checkpoint id)): resumable, trusted by stat, never
    made twice. The config id is the checkpoint's id and steps with the generation settings
    (batch size and device aside, as for every model stage: each image has its own seeded
    generator, and other batch sizes or devices give equal edits only within a tolerance); an
    item's upstream is its instruction and input (the pair's digest for our
    test split, the embedded bytes for MagicBrush)."""

    table = EVALUATION_EDITS

    def __init__(self, storage: Storage, benchmark: str, samples: list[dict], checkpoint: dict, config):
        self.storage, self.benchmark, self.samples, self.checkpoint, self.config = (
            storage,
            benchmark,
            samples,
            checkpoint,
            config,
        )
        self.batch_size = config.batch_size
        identity = fingerprint_of(checkpoint["checkpoint_id"], checkpoint.get("steps"))
        self.config_id = f"{identity}-{fingerprint(config, exclude=('batch_size', 'device'))}"

    def items(self) -> list[StageItem]:
        return [
            StageItem(
                key=s["sample_id"],
                row=s,
                upstream=fingerprint_of(portable(self.storage, [s["instruction"], s["input"], s.get("digest")])),
                input_files=(s["input"],) if isinstance(s["input"], str) else (),
            )
            for s in self.samples
        ]

    def prepare(self, item: StageItem):
        return _decode(item.row["input"]), item.row["instruction"]

    def compute(self, prepared: list) -> list:
        from pbi_ml.evaluate.generate import generate_edits

        images, instructions = [p[0] for p in prepared], [p[1] for p in prepared]
        return generate_edits(self.checkpoint["pipeline_dir"], images, instructions, self.config)

    def write(self, item: StageItem, result, directory: Path) -> ItemOutput:
        return ItemOutput(files={"output": save_png(result, directory / "output.png")})

    def _row(self, item: StageItem, output: str | None, status: str, error: str | None) -> dict:
        return {
            "checkpoint_id": self.checkpoint["checkpoint_id"],
            "benchmark": self.benchmark,
            "sample_id": item.key,
            "output_image": output,
            "status": status,
            "error": error,
        }

    def rows(self, item: StageItem, record: dict) -> list[dict]:
        return [self._row(item, absolute_files(self.storage, record)["output"], "ok", None)]

    def failed_rows(self, item: StageItem, record: dict) -> list[dict]:
        return [self._row(item, None, "failed", record["error"])]


def run_evaluation(
    storage: Storage,
    config: EvaluationConfig,
    *,
    checkpoint: dict | None = None,
    progress: Progress | None = None,
) -> StageResult:
    """Evaluate `checkpoint` (default: the latest trained one) on every configured benchmark.
    Without any checkpoint, returns a result whose `skipped` says why (nothing failed)."""
    from pbi_ml.evaluate.generate import GenerateConfig
    from pbi_ml.evaluate.metrics import MetricsConfig, compute_metrics
    from pbi_ml.stages.training import latest_checkpoint

    if checkpoint is None:
        try:
            checkpoint = latest_checkpoint(storage)
        except FileNotFoundError:
            return StageResult(
                table=EVALUATIONS.schema.empty_table(),
                path=None,
                counts={},
                skipped="no checkpoint: nothing has been trained yet (no train pairs?)",
            )
    if config.resolution is None:
        config = dataclasses.replace(config, resolution=64 if checkpoint["smoke_model"] else 512)
    benchmarks = {"pipe_test": pipe_test_samples(storage, config)}
    subset_counts: dict = {}
    if config.magicbrush_parquet:
        benchmarks["magicbrush_add"] = magicbrush_samples(config.magicbrush_parquet, config, subset_counts)
    generate_config = _subset(config, GenerateConfig)
    metrics_config = _subset(config, MetricsConfig)
    ckpt_id = checkpoint["checkpoint_id"]

    summaries, grid = [], []
    all_sample_rows = []
    for benchmark, all_samples in benchmarks.items():
        edits = run_item_stage(
            storage, EditStage(storage, benchmark, all_samples, checkpoint, generate_config), benchmark, ckpt_id
        )
        made = {r["sample_id"]: r for r in edits.table.to_pylist()}
        failed = [r for r in made.values() if r["status"] != "ok"]
        subset_counts[f"{benchmark}_edits_made_this_run"] = edits.counts["items_computed_this_run"]
        subset_counts[f"{benchmark}_edits_failed"] = len(failed)
        samples = [s for s in all_samples if made[s["sample_id"]]["status"] == "ok"]  # failed: no edit to score
        inputs = [_decode(s["input"]) for s in samples[:3]]  # the metadata's grid
        targets = [_decode(s["target"]) for s in samples]
        instructions = [s["instruction"] for s in samples]
        captions = [s["caption"] for s in samples]
        file_names = [f"{_safe(s['sample_id'])}.png" for s in samples]  # CMMD orders the images by these
        output_paths = [made[s["sample_id"]]["output_image"] for s in samples]
        outputs = [load_rgb_path(path) for path in output_paths]
        per_sample, summary = (
            compute_metrics(outputs, targets, captions, metrics_config, instructions=instructions, sort_keys=file_names)
            if samples
            else ([], {})
        )
        sample_rows = []
        for s, path, metrics in zip(samples, output_paths, per_sample, strict=True):
            sample_rows.append(
                {
                    "checkpoint_id": ckpt_id,
                    "benchmark": benchmark,
                    "sample_id": s["sample_id"],
                    "instruction": s["instruction"],
                    "caption": s["caption"],
                    "output_image": path,
                    **{m: metrics.get(m) for m in SAMPLE_METRICS},
                    "null_reason": metrics.get("null_reason"),
                }
            )
        for inp, out, tgt, s in zip(inputs, outputs, targets, samples, strict=False):  # the first 3
            grid += [(f"input: {s['instruction']}", inp), ("output", out), ("ground truth", tgt)]
        summary_row = {
            "checkpoint_id": ckpt_id,
            "benchmark": benchmark,
            "n": len(samples),
            "smoke_model": bool(checkpoint["smoke_model"]),
            "device": device_of(config),
            "config": json.dumps(dataclasses.asdict(config), default=str),
        }
        for m in METRICS:
            summary_row[m] = summary.get(m)
            summary_row[f"{m}_null_reason"] = summary.get(f"{m}_null_reason") if samples else "no samples"
        summary_row["cmmd_n"] = summary.get("cmmd_n")
        summaries.append(summary_row)
        storage.write_table(
            EVALUATION_SAMPLES, benchmark, ckpt_id, table_from_records(sample_rows, EVALUATION_SAMPLES.schema)
        )
        all_sample_rows += sample_rows
        storage.write_table(EVALUATIONS, benchmark, ckpt_id, table_from_records([summary_row], EVALUATIONS.schema))
        if progress:
            progress(len(summaries), len(benchmarks))
    table = table_from_records(summaries, EVALUATIONS.schema)
    counts = {f"{r['benchmark']}_n": r["n"] for r in summaries}
    counts.update(subset_counts)
    return StageResult(
        table=table,
        path=None,
        counts=counts,
        samples=grid,
        extra={"samples": all_sample_rows, "checkpoint": checkpoint},
    )


def _safe(value: str) -> str:
    from pbi_ml.storage import safe_name

    return safe_name(value.replace("/", "__"))

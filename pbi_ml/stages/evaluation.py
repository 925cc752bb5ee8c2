"""The evaluation stage: generate edits with a checkpoint and score them (MagicBrush protocol).

Benchmarks:
    pipe_test          our test split (SPEC: the paper's PIPE test = 752 COCO-val pairs)
    magicbrush_add     a MagicBrush-format parquet (columns source_img, target_img, instruction),
                       when configured, restricted to the "add" subset: instructions containing the
                       word "add" or "put" and neither "remove" nor "and" (whole words, any case)

Inference: SPEC's settings (EulerAncestral, 50 steps, text guidance 7, image guidance 1.5, seed 0).
Metrics: L1, L2 (MSE) on [0,1] pixels after resizing the output to the ground truth; CLIP-I,
CLIP-T (CLIP ViT-B/32), DINO (ViT-S/16), CMMD. Metrics whose weights are absent are null with the
reason. One summary row per (benchmark, checkpoint) and one row per sample.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pbi_ml.catalog import read_view
from pbi_ml.imageio import load_rgb_path, save_png
from pbi_ml.stages.common import StageResult
from pbi_ml.storage import Storage, table_from_records

STAGE = "evaluations"
SAMPLES_STAGE = "evaluation_samples"
METRICS = ("l1", "l2", "clip_i", "clip_t", "dino", "cmmd")


@dataclass(frozen=True)
class EvaluationConfig:
    instruction_kind: str = "vlm_llm"  # vlm_llm | class | ref: which stored instruction drives the edit
    max_samples: int | None = None
    magicbrush_parquet: str | None = None
    num_inference_steps: int = 50
    guidance_scale: float = 7.0
    image_guidance_scale: float = 1.5
    seed: int = 0
    resolution: int | None = None  # None: 512 for real models, 64 for a smoke model
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "auto"
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = "openai"
    dino_model: str = "facebook/dino-vits16"
    cmmd_clip_model: str = "ViT-L-14-336"
    cmmd_clip_pretrained: str = "openai"


EVALUATION_SCHEMA = pa.schema(
    [
        ("checkpoint_id", pa.string()),
        ("benchmark", pa.string()),
        ("n", pa.int64()),
        *[(m, pa.float64()) for m in METRICS],
        *[(f"{m}_null_reason", pa.string()) for m in METRICS],
        ("smoke_model", pa.bool_()),
        ("config", pa.string()),
    ]
)
SAMPLE_SCHEMA = pa.schema(
    [
        ("checkpoint_id", pa.string()),
        ("benchmark", pa.string()),
        ("sample_id", pa.string()),
        ("instruction", pa.string()),
        ("output_image", pa.string()),
        *[(m, pa.float64()) for m in ("l1", "l2", "clip_i", "clip_t", "dino")],
        ("null_reason", pa.string()),
    ]
)

_WORD = re.compile(r"[a-z]+")


def is_magicbrush_add(instruction: str) -> bool:
    words = set(_WORD.findall((instruction or "").lower()))
    return bool(words & {"add", "put"}) and not (words & {"remove", "and"})


def _subset(config, cls):
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dataclasses.asdict(config).items() if k in names})


def pipe_test_samples(storage: Storage, config: EvaluationConfig) -> list[dict]:
    rows = read_view(storage, "pairs", where="split = 'test'").to_pylist()
    samples = []
    for row in sorted(rows, key=lambda r: r["pair_id"]):
        instruction = row.get(f"instruction_{config.instruction_kind}") or row.get("instruction_class")
        samples.append(
            {
                "sample_id": row["pair_id"],
                "instruction": instruction,
                "input": row["source_image"],
                "target": row["target_image"],
            }
        )
    return samples[: config.max_samples] if config.max_samples else samples


def magicbrush_samples(path: str, config: EvaluationConfig) -> list[dict]:
    table = pq.read_table(path)
    missing = {"source_img", "target_img", "instruction"} - set(table.column_names)
    if missing:
        raise ValueError(f"{path}: MagicBrush parquet lacks columns {sorted(missing)}")
    samples = []
    for i, row in enumerate(table.to_pylist()):
        if not is_magicbrush_add(row["instruction"]):
            continue
        sample_id = f"{row.get('img_id', i)}-{row.get('turn_index', 0)}"
        samples.append(
            {
                "sample_id": sample_id,
                "instruction": row["instruction"],
                "input": row["source_img"],
                "target": row["target_img"],
            }
        )
    return samples[: config.max_samples] if config.max_samples else samples


def _decode(value) -> np.ndarray:
    if isinstance(value, str):
        return load_rgb_path(value)
    data = value["bytes"] if isinstance(value, dict) else value
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def run_evaluation(storage: Storage, checkpoint: dict, config: EvaluationConfig) -> StageResult:
    from pbi_ml.evaluate.generate import GenerateConfig, generate_edits
    from pbi_ml.evaluate.metrics import MetricsConfig, compute_metrics

    if config.resolution is None:
        config = dataclasses.replace(config, resolution=64 if checkpoint["smoke_model"] else 512)
    benchmarks = {"pipe_test": pipe_test_samples(storage, config)}
    if config.magicbrush_parquet:
        benchmarks["magicbrush_add"] = magicbrush_samples(config.magicbrush_parquet, config)
    generate_config = _subset(config, GenerateConfig)
    metrics_config = _subset(config, MetricsConfig)
    ckpt_id = checkpoint["checkpoint_id"]

    summaries, grid = [], []
    all_sample_rows = []
    for benchmark, samples in benchmarks.items():
        inputs = [_decode(s["input"]) for s in samples]
        targets = [_decode(s["target"]) for s in samples]
        instructions = [s["instruction"] for s in samples]
        outputs = generate_edits(checkpoint["pipeline_dir"], inputs, instructions, generate_config) if samples else []
        per_sample, summary = compute_metrics(outputs, targets, instructions, metrics_config) if samples else ([], {})
        out_dir = storage.file_dir("evaluation", ckpt_id, benchmark, "outputs")
        sample_rows = []
        for s, output, metrics in zip(samples, outputs, per_sample):
            path = save_png(output, out_dir / f"{_safe(s['sample_id'])}.png")
            sample_rows.append(
                {
                    "checkpoint_id": ckpt_id,
                    "benchmark": benchmark,
                    "sample_id": s["sample_id"],
                    "instruction": s["instruction"],
                    "output_image": str(path),
                    **{m: metrics.get(m) for m in ("l1", "l2", "clip_i", "clip_t", "dino")},
                    "null_reason": metrics.get("null_reason"),
                }
            )
        for inp, out, tgt, s in list(zip(inputs, outputs, targets, samples))[:3]:
            grid.append((s["instruction"], inp, out, tgt))
        summary_row = {
            "checkpoint_id": ckpt_id,
            "benchmark": benchmark,
            "n": len(samples),
            "smoke_model": bool(checkpoint["smoke_model"]),
            "config": json.dumps(dataclasses.asdict(config), default=str),
        }
        for m in METRICS:
            summary_row[m] = summary.get(m)
            summary_row[f"{m}_null_reason"] = summary.get(f"{m}_null_reason") if samples else "no samples"
        summaries.append(summary_row)
        storage.write_table(SAMPLES_STAGE, benchmark, ckpt_id, table_from_records(sample_rows, SAMPLE_SCHEMA))
        all_sample_rows += sample_rows
        storage.write_table(STAGE, benchmark, ckpt_id, table_from_records([summary_row], EVALUATION_SCHEMA))
    table = table_from_records(summaries, EVALUATION_SCHEMA)
    counts = {f"{r['benchmark']}_n": r["n"] for r in summaries}
    return StageResult(table=table, path=None, counts=counts, extra={"grid": grid, "samples": all_sample_rows})


def _safe(value: str) -> str:
    from pbi_ml.storage import safe_name

    return safe_name(value.replace("/", "__"))

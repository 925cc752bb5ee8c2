"""Every stage table, declared once: its name, its Arrow schema and its key columns.

A leaf module: the stages write these tables, the catalog builds a view over each, and neither
imports the other for it. Nowhere else spells a table name as a string literal.

Item-stage tables (removals, removal_scores, pairs, descriptions, instructions, pair_judgments) have one row per
item that entered the stage (one per removal candidate for removals and removal_scores), with
`status` "ok" or "failed" and, when failed, `error` = a reason code from `pbi_ml.reasons`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class TableSpec:
    """One stage table. `partitioned` tables live at tables/<name>/<source>/<shard>.parquet."""

    name: str
    schema: pa.Schema
    key: tuple[str, ...]
    partitioned: bool = True
    description: str = ""


# the filter-score columns (definitions in pbi_ml/scoring/base.py)
STATS_COLUMNS = ["stats_consensus_std", "stats_boundary_contrast", "stats_change", "stats_texture_ratio"]
CLIP_COLUMNS = ["clip_consensus_std", "clip_removal_sim", "clip_removal_sim_before", "clip_importance_sim"]
SCORE_COLUMNS = [*STATS_COLUMNS, *CLIP_COLUMNS, "clip_null_reason"]
SCORE_FIELDS = [
    *[pa.field(name, pa.float64()) for name in STATS_COLUMNS],
    *[pa.field(name, pa.float64()) for name in CLIP_COLUMNS],
    pa.field("clip_null_reason", pa.string()),
]

# the normalised instance index every source reader produces (pbi_ml/sources/base.py)
INDEX_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("shard", pa.string()),  # "000" .. shard_key(num_shards - 1)
        ("image_id", pa.string()),
        ("annotation_id", pa.string()),
        ("category", pa.string()),  # human-readable class name ("cat", "coffee cup")
        ("category_id", pa.string()),  # the source's own id ("17", "/m/01yrx")
        ("category_frequency", pa.string()),  # LVIS "r" / "c" / "f"; null elsewhere
        ("category_synonyms", pa.list_(pa.string())),  # LVIS synonyms; [category] elsewhere
        ("category_not_exhaustive", pa.bool_()),  # LVIS: class listed in the image's not_exhaustive_category_ids
        ("image_file", pa.string()),  # relative to the source's images root, as annotated
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bbox_x", pa.float64()),
        ("bbox_y", pa.float64()),
        ("bbox_w", pa.float64()),
        ("bbox_h", pa.float64()),
        ("area", pa.float64()),  # mask area in pixels (0 for a degenerate mask)
        ("iscrowd", pa.bool_()),
        ("segmentation", pa.string()),  # JSON: [[x,y,...], ...] or {"size": [h, w], "counts": ...}
        ("mask_file", pa.string()),  # Open Images: relative to the masks root
        ("index_error", pa.string()),  # null, or why this annotation's mask is unusable
    ]
)

# the identity columns every per-object and per-pair table starts with
_OBJECT_COLUMNS = [
    ("source", pa.string()),
    ("shard", pa.string()),
    ("image_id", pa.string()),
    ("annotation_id", pa.string()),
    ("category", pa.string()),
]
_PAIR_COLUMNS = [("pair_id", pa.string()), *_OBJECT_COLUMNS]

_STATUS = [
    ("status", pa.string()),  # "ok" or "failed"
    ("error", pa.string()),  # reason code (pbi_ml.reasons) when failed
]

# model-stage tables: the device that computed the row ("cuda:1", "cpu"; "cpu" for embedded backends)
_DEVICE = [("device", pa.string())]

SOURCE_INDEX = TableSpec(
    "source_index",
    INDEX_SCHEMA,
    key=("source", "annotation_id"),
    description="every annotated instance of the source, normalised",
)

CANDIDATES = TableSpec(
    "candidates",
    pa.schema(
        list(INDEX_SCHEMA)
        + [
            pa.field("area_fraction", pa.float64()),
            pa.field("kept", pa.bool_()),
            pa.field("reject_reason", pa.string()),
        ]
    ),
    key=("source", "annotation_id"),
    description="every instance, kept or rejected by the pre-removal filters with its reason",
)

CLASS_SCORES = TableSpec(
    "class_scores",
    pa.schema(
        [
            *_OBJECT_COLUMNS,
            ("clip_class_sim", pa.float64()),  # CLIP cosine of the isolated object with "a photo of a <class>"
            ("clip_null_reason", pa.string()),  # why clip_class_sim is null (filter skipped: no weights)
            ("min_class_sim", pa.float64()),
            ("passed", pa.bool_()),  # null when the filter was skipped
            ("class_backend", pa.string()),
            *_STATUS,
            *_DEVICE,
        ]
    ),
    key=("source", "annotation_id"),
    description="the pre-removal CLIP class-similarity filter of every kept candidate",
)

REMOVALS = TableSpec(
    "removals",
    pa.schema(
        [
            *_OBJECT_COLUMNS,
            ("candidate", pa.int32()),  # 0..K-1; -1 on the row of an object that failed
            ("method", pa.string()),  # e.g. "telea r=3", "sd seed=1"
            ("removal_image", pa.string()),  # absolute path of the inpainted PNG
            ("context", pa.string()),  # how much was inpainted: crop | full (diffusers) | native (opencv)
            *_STATUS,
            *_DEVICE,
            ("backend", pa.string()),
            ("dilation_px", pa.int32()),  # the dilation the removal used (scores and pairs reuse it)
            ("config_id", pa.string()),
            ("output_digest", pa.string()),  # digest of the object's K PNGs (what downstream depends on)
        ]
    ),
    key=("source", "annotation_id", "candidate"),
    description="K inpainted candidates per kept object, or one failed row with the reason",
)

REMOVAL_SCORES = TableSpec(
    "removal_scores",
    pa.schema(
        [
            *_OBJECT_COLUMNS,
            ("candidate", pa.int32()),  # -1 on the row of an object that failed
            ("method", pa.string()),
            ("removal_image", pa.string()),
            ("hole_radius_px", pa.float64()),  # pbi_ml.masks.hole_radius_px of the dilated mask
            *SCORE_FIELDS,
            ("scoring_backend", pa.string()),
            ("passed", pa.bool_()),
            ("reject_reason", pa.string()),
            ("chosen", pa.bool_()),
            *_STATUS,
            *_DEVICE,
        ]
    ),
    key=("source", "annotation_id", "candidate"),
    description="the filter scores of every removal candidate, passed / reject_reason / chosen",
)

PAIRS = TableSpec(
    "pairs",
    pa.schema(
        [
            *_PAIR_COLUMNS,
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
            *_STATUS,
            ("output_digest", pa.string()),  # digest of the pair's four PNGs
        ]
    ),
    key=("pair_id",),
    description="one object-removal pair per object with a chosen candidate (or a failed row)",
)

# the noise-residual statistics of a region (pbi_ml/audit.py), stored for the source's and the target's
AUDIT_FEATURES = ("hp_energy", "hp_energy_ratio", "local_var", "local_var_ratio", "residual_kurtosis")

ARTIFACT_AUDIT = TableSpec(
    "artifact_audit",
    pa.schema(
        [
            *_PAIR_COLUMNS,
            ("detectability", pa.float64()),  # out-of-fold P(inpainted) of the source's region
            ("target_probability", pa.float64()),  # the same for the target's region (the real photo)
            ("detectability_null_reason", pa.string()),  # why both are null (too few pairs)
            ("audit_backend", pa.string()),
            *[(f"{image}_{name}", pa.float64()) for image in ("source", "target") for name in AUDIT_FEATURES],
        ]
    ),
    key=("pair_id",),
    description="how detectable each ok pair's inpainted region is: a cross-validated classifier's probability",
)

DESCRIPTIONS = TableSpec(
    "descriptions",
    pa.schema(
        [
            *_PAIR_COLUMNS,
            ("description", pa.string()),  # null when the pair failed (see error)
            ("describe_backend", pa.string()),
            ("describe_model", pa.string()),
            *_STATUS,
            *_DEVICE,
        ]
    ),
    key=("pair_id",),
    description="what each removed object looks like, one text per ok pair",
)

INSTRUCTIONS = TableSpec(
    "instructions",
    pa.schema(
        [
            *_PAIR_COLUMNS,
            ("object_location", pa.string()),
            ("instruction_class", pa.string()),
            ("instruction_vlm_llm", pa.string()),
            ("instruction_vlm_llm_raw", pa.string()),
            ("instruction_ref", pa.string()),
            ("instruction_check", pa.string()),  # "passed", or why the rewrite was replaced
            ("instruction_check_similarity", pa.float64()),
            ("instruct_backend", pa.string()),
            *_STATUS,
            *_DEVICE,
        ]
    ),
    key=("pair_id",),
    description="three kinds of 'add' instruction per ok pair",
)

PAIR_JUDGMENTS = TableSpec(
    "pair_judgments",
    pa.schema(
        [
            *_PAIR_COLUMNS,
            ("instruction", pa.string()),  # the instruction the judge saw (instruction_vlm_llm)
            ("judge_compliance", pa.int32()),  # 1-5, null with judge_null_reason
            ("judge_naturalness", pa.int32()),  # 1-5, capped by judge_compliance
            ("judge_coherence", pa.int32()),  # 1-5, capped by judge_compliance
            ("judge_score", pa.float64()),  # the mean of the three
            ("judge_reason", pa.string()),  # the judge's one sentence
            ("judge_raw", pa.string()),  # the model's whole answer
            ("judge_null_reason", pa.string()),  # why the scores are null (backend off, unparsed answer)
            ("judge_backend", pa.string()),
            ("judge_model", pa.string()),
            *_STATUS,
            *_DEVICE,
        ]
    ),
    key=("pair_id",),
    description="a VLM judge's rubric scores (ImgEdit 'add') of every ok pair, beyond the paper",
)

SPLITS = TableSpec(
    "splits",
    pa.schema(
        [
            *_PAIR_COLUMNS,
            ("split", pa.string()),
            ("split_rule", pa.string()),  # test_source | image_in_a_test_source | hash | judge_score_below_min
        ]
    ),
    key=("pair_id",),
    description="train, test or excluded (judge score under min_judge_score) for every ok pair",
)

CHECKPOINTS = TableSpec(
    "checkpoints",
    pa.schema(
        [
            ("checkpoint_id", pa.string()),
            ("recipe", pa.string()),
            ("pipeline_dir", pa.string()),
            ("smoke_model", pa.bool_()),
            ("train_pairs", pa.int64()),
            ("train_examples_sources", pa.string()),
            ("steps", pa.int64()),
            ("epochs_completed", pa.float64()),
            ("final_loss", pa.float64()),
            ("samples_per_second", pa.float64()),
            ("wall_time_s", pa.float64()),
            ("resumed_from_step", pa.int64()),
            ("loss_curve", pa.string()),  # JSON [[step, loss], ...]
            ("config", pa.string()),  # JSON of the TrainConfig
            ("world_size", pa.int64()),  # training processes (accelerate launch; 1 = in the step's process)
            ("device", pa.string()),  # cuda:1 (one process), cuda / cpu (world_size processes, one device each)
            ("effective_batch_size", pa.int64()),  # samples per optimizer step, all processes
            ("latents", pa.string()),  # on_the_fly | cache
        ]
    ),
    key=("checkpoint_id",),
    partitioned=False,
    description="one row per trained checkpoint",
)


# the evaluation metrics (how each is computed: pbi_ml/evaluate/metrics.py and the README)
SAMPLE_METRICS = ("l1", "l2", "clip_i", "clip_t", "clip_t_instruction", "dino")
EVALUATION_METRICS = (*SAMPLE_METRICS, "cmmd", "cmmd_all")  # float columns, each with a <metric>_null_reason

EVALUATIONS = TableSpec(
    "evaluations",
    pa.schema(
        [
            ("checkpoint_id", pa.string()),
            ("benchmark", pa.string()),
            ("n", pa.int64()),
            *[(m, pa.float64()) for m in EVALUATION_METRICS],
            *[(f"{m}_null_reason", pa.string()) for m in EVALUATION_METRICS],
            ("cmmd_n", pa.int64()),  # images of each set the reference-style cmmd used
            ("device", pa.string()),  # where the edits were generated and scored
            ("smoke_model", pa.bool_()),
            ("config", pa.string()),
        ]
    ),
    key=("checkpoint_id", "benchmark"),
    partitioned=False,
    description="one row per checkpoint and benchmark",
)

EVALUATION_SAMPLES = TableSpec(
    "evaluation_samples",
    pa.schema(
        [
            ("checkpoint_id", pa.string()),
            ("benchmark", pa.string()),
            ("sample_id", pa.string()),
            ("instruction", pa.string()),
            ("caption", pa.string()),  # the target's caption CLIP-T scores against (null: none)
            ("output_image", pa.string()),
            *[(m, pa.float64()) for m in SAMPLE_METRICS],
            ("null_reason", pa.string()),
        ]
    ),
    key=("checkpoint_id", "benchmark", "sample_id"),
    partitioned=False,
    description="per-sample metrics of each evaluation",
)

EVALUATION_EDITS = TableSpec(
    "evaluation_edits",
    pa.schema(
        [
            ("checkpoint_id", pa.string()),
            ("benchmark", pa.string()),
            ("sample_id", pa.string()),
            ("output_image", pa.string()),  # the edit the checkpoint made (null: failed, see error)
            ("status", pa.string()),
            ("error", pa.string()),
        ]
    ),
    key=("checkpoint_id", "benchmark", "sample_id"),
    partitioned=False,
    description="each evaluation edit made (an item stage per benchmark and checkpoint: resumable, never made twice)",
)

PARTITIONED_TABLES = (
    SOURCE_INDEX,
    CANDIDATES,
    CLASS_SCORES,
    REMOVALS,
    REMOVAL_SCORES,
    PAIRS,
    ARTIFACT_AUDIT,
    DESCRIPTIONS,
    INSTRUCTIONS,
    PAIR_JUDGMENTS,
    SPLITS,
)
# the tables written through the item mechanism (pbi_ml/stages/item_stage.py), one ledger each
ITEM_TABLES = (CLASS_SCORES, REMOVALS, REMOVAL_SCORES, PAIRS, DESCRIPTIONS, INSTRUCTIONS, PAIR_JUDGMENTS)
ALL_TABLES = (*PARTITIONED_TABLES, CHECKPOINTS, EVALUATIONS, EVALUATION_EDITS, EVALUATION_SAMPLES)

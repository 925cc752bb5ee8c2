"""Descriptions of the removed objects, "add" instructions, the pair judge, and the train/test split."""

import dagster as dg

from pbi_assets.assets.removal import pairs
from pbi_assets.assets.stage_asset import StageAsset, stage_asset
from pbi_ml.config import SplitConfig
from pbi_ml.describe import DescribeConfig
from pbi_ml.instruct import InstructConfig
from pbi_ml.judge import JudgeConfig, lowest_judged_table
from pbi_ml.stages.descriptions import run_descriptions
from pbi_ml.stages.instructions import run_instructions
from pbi_ml.stages.pair_judgments import run_pair_judgments
from pbi_ml.stages.splits import run_splits
from pbi_ml.tables import DESCRIPTIONS, INSTRUCTIONS, PAIR_JUDGMENTS, SPLITS

descriptions = stage_asset(
    StageAsset(
        name=DESCRIPTIONS.name,
        run=run_descriptions,
        config_class=DescribeConfig,
        group="instructions",
        deps=[pairs],
        model=True,
        progress="pairs described",
        examples=["category", "description", "error"],
    )
)

instructions = stage_asset(
    StageAsset(
        name=INSTRUCTIONS.name,
        run=run_instructions,
        config_class=InstructConfig,
        group="instructions",
        deps=[descriptions],
        model=True,
        progress="pairs instructed",
        histograms={"instruction_check_similarity": "instruction check similarity (MiniLM)"},
        examples=[
            "instruction_class",
            "instruction_vlm_llm",
            "instruction_ref",
            "instruction_check",
            "object_location",
        ],
    )
)

pair_judgments = stage_asset(
    StageAsset(
        name=PAIR_JUDGMENTS.name,
        run=run_pair_judgments,
        config_class=JudgeConfig,
        group="instructions",
        deps=[instructions],
        model=True,
        progress="pairs judged",
        histograms={"judge_score": "judge score (1-5, mean of the rubric)"},
        extra_metadata=lambda result, _: {
            "lowest_scored": dg.MetadataValue.md(lowest_judged_table(result.table.to_pylist()))
        },
    )
)

splits = stage_asset(
    StageAsset(
        name=SPLITS.name,
        run=run_splits,
        config_class=SplitConfig,
        group="instructions",
        deps=[pairs, pair_judgments],
        run_kwargs=lambda pbi: {"project": pbi.project()},
    )
)

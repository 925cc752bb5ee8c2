"""Descriptions of the removed objects, "add" instructions, and the train/test split."""

from pbi_assets.assets.removal import pairs
from pbi_assets.assets.stage_asset import StageAsset, stage_asset
from pbi_ml.config import SplitConfig
from pbi_ml.describe import DescribeConfig
from pbi_ml.instruct import InstructConfig
from pbi_ml.stages.descriptions import run_descriptions
from pbi_ml.stages.instructions import run_instructions
from pbi_ml.stages.splits import run_splits
from pbi_ml.tables import DESCRIPTIONS, INSTRUCTIONS, SPLITS

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

splits = stage_asset(
    StageAsset(
        name=SPLITS.name,
        run=run_splits,
        config_class=SplitConfig,
        group="instructions",
        deps=[pairs],
        run_kwargs=lambda pbi: {"project": pbi.project()},
    )
)

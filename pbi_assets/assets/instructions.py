"""Descriptions of the removed objects, "add" instructions, and the train/test split."""

from pbi_assets.assets.removal import pairs
from pbi_assets.assets.stage_asset import StageAsset, markdown_examples, stage_asset
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
        extra_metadata=lambda result, _: {
            "examples": markdown_examples(result.table.to_pylist(), ["category", "description", "error"])
        },
        summary=(
            "What each removed object looks like. The describer sees the original photo with everything "
            "but the object masked out. Backend `pixels` (no weights: colour names, size, shape measured "
            "under the mask) or `vlm` (transformers image-text-to-text with the paper's prompt; CogVLM only "
            "with trust_remote_code)."
        ),
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
        extra_metadata=lambda result, _: {
            "examples": markdown_examples(
                result.table.to_pylist(),
                ["instruction_class", "instruction_vlm_llm", "instruction_ref", "instruction_check", "object_location"],
            )
        },
        summary=(
            "Three instruction kinds per pair (PIPE columns): class template 'add a <class>', the "
            "description rewritten as an instruction (backend `templates`, or `llm` with the paper's 5-shot "
            "prompt), and 'add a <referring expression>' when a refs file is configured. Beyond the paper: "
            "an instruction check (lexical + MiniLM similarity) replaces rewrites that do not name their "
            "object, keeping the reason. The location phrase is added at training time."
        ),
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
        summary=(
            "train / test per pair, by image: sources with role: test go to test, an image that appears in "
            "any test source goes to test everywhere, the rest by a seeded hash of the image id "
            "(test_fraction, with a per-source override; 0 plus a role: test source reproduces the paper)."
        ),
    )
)

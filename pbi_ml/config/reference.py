"""docs/configuration.md, generated from the config dataclasses; and every stage's config class.

    python -m pbi_ml.config.reference > docs/configuration.md

Each table row is one field as `pbi_ml.config.fields.describe_fields` reads it (name, type,
default, and the comment beside the field in its dataclass), the same rows the Dagster asset
descriptions show, so a default or a field's meaning is written once: in its dataclass.
tests/unit/test_config.py fails when docs/configuration.md is not what this module writes.
"""

from __future__ import annotations

import inspect
import sys

from pbi_ml.cluster import EXECUTORS, STAGE_RESOURCES, K8sConfig, StageResources
from pbi_ml.config.fields import describe_fields, fields_table, markdown_text
from pbi_ml.config.project import ProjectConfig, SourceConfig
from pbi_ml.config.stages import (
    ArtifactAuditConfig,
    CandidateConfig,
    ClassFilterConfig,
    PairConfig,
    RemovalConfig,
    ScoringConfig,
    SplitConfig,
)
from pbi_ml.describe import DescribeConfig
from pbi_ml.export import ExportConfig
from pbi_ml.instruct import InstructConfig
from pbi_ml.judge import JudgeConfig
from pbi_ml.stages.evaluation import EvaluationConfig
from pbi_ml.stages.training import RECIPES
from pbi_ml.train.config import TrainConfig

# every configurable stage's config dataclass by its `stages:` key in pbi.yaml (its asset's name),
# in graph order; the checkpoint stage also takes `recipe` (pbi_ml.stages.training.train_config_for)
STAGE_CONFIGS: dict[str, type] = {
    "candidates": CandidateConfig,
    "class_scores": ClassFilterConfig,
    "removals": RemovalConfig,
    "removal_scores": ScoringConfig,
    "pairs": PairConfig,
    "artifact_audit": ArtifactAuditConfig,
    "descriptions": DescribeConfig,
    "instructions": InstructConfig,
    "pair_judgments": JudgeConfig,
    "splits": SplitConfig,
    "exports": ExportConfig,
    "checkpoint": TrainConfig,
    "evaluation": EvaluationConfig,
}

COMMAND = "python -m pbi_ml.config.reference > docs/configuration.md"


def _docstring(cls) -> str:
    """The class's own docstring ("" for the signature dataclasses writes when there is none)."""
    doc = inspect.getdoc(cls) or ""
    return "" if doc.startswith(f"{cls.__name__}(") else doc


def _section(title: str, cls, *notes: str) -> list[str]:
    lines = [title, ""]
    for text in (_docstring(cls), *notes):
        if text:
            lines += [markdown_text(text), ""]
    return [*lines, fields_table(cls), ""]


def configuration_markdown() -> str:
    """The text of docs/configuration.md."""
    resources = [f.name for f in describe_fields(StageResources)]
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from the config dataclasses by `{COMMAND}`; do not edit by hand. -->",
        "",
        "The project is configured by one file, `pbi.yaml` in the working directory, or the file",
        "`$PBI_CONFIG` names. Without a `pbi.yaml` the project has only the bundled demo source;",
        "a file named by `$PBI_CONFIG` must exist. Relative paths in the file are resolved against",
        "its folder. `pbi check` validates the file and its sources in seconds.",
        "",
        "A stage's parameters come from, lowest first: the defaults below, the stage's section",
        "under `stages:` in `pbi.yaml`, and the Dagster run config of the asset. An unknown stage",
        "or parameter, or a bad value, fails naming it.",
        "",
        "```yaml",
        "data_root: /data/pbi",
        "num_shards: 8",
        "sources:",
        "  - {name: coco, format: coco, images: coco/train2017, annotations: coco/instances_train2017.json}",
        "stages:",
        "  removals: {backend: diffusers, num_candidates: 3}",
        "  checkpoint: {recipe: paper}",
        "```",
        "",
        *_section("## The project file", ProjectConfig, f"`executor` is one of {', '.join(EXECUTORS)}."),
        *_section("### `sources:`", SourceConfig),
        *_section("### `k8s:`", K8sConfig),
        "#### `k8s.stages`: each stage's pod",
        "",
        "Override one field of one stage: `k8s: {stages: {checkpoint: {gpus: 4}}}`.",
        "",
        "| stage | " + " | ".join(resources) + " |",
        "|---|" + "---|" * len(resources),
        *(
            f"| `{stage}` | " + " | ".join(str(getattr(pod, name)) for name in resources) + " |"
            for stage, pod in STAGE_RESOURCES.items()
        ),
        "",
        "## Stages",
        "",
    ]
    for stage, cls in STAGE_CONFIGS.items():
        notes = []
        if stage == "checkpoint":
            notes.append(
                f"Also `recipe`: one of {', '.join(RECIPES)} (default {RECIPES[0]}); the fields set in "
                "`pbi.yaml` or the run config override the recipe's (pbi_ml/stages/training.py)."
            )
        lines += _section(f"### `{stage}` ({cls.__name__})", cls, *notes)
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(configuration_markdown())

"""Configuration: the project file and the stage configs.

- `pbi_ml.config.project`: `pbi.yaml` (or `$PBI_CONFIG`): data root, shards, sources, devices,
  executor, and each stage's parameters (`stages:`);
- `pbi_ml.config.stages`: the data stages' config dataclasses;
- `pbi_ml.config.fields`: how a config dataclass is validated (`check_fields`), built from a
  mapping (`config_from_dict`) and described (`describe_fields`);
- `pbi_ml.config.reference`: every configurable stage's config class by its `stages:` key, and
  docs/configuration.md generated from them (`python -m pbi_ml.config.reference`).

Importing this package loads no torch.
"""

from pbi_ml.config.fields import check_fields, config_from_dict
from pbi_ml.config.project import (
    ProjectConfig,
    SourceConfig,
    default_config_path,
    demo_source,
    load_project_config,
    project_config,
    shard_key,
)
from pbi_ml.config.stages import (
    ArtifactAuditConfig,
    CandidateConfig,
    ClassFilterConfig,
    PairConfig,
    RemovalConfig,
    ScoringConfig,
    SourceIndexConfig,
    SplitConfig,
)

__all__ = [
    "ArtifactAuditConfig",
    "CandidateConfig",
    "ClassFilterConfig",
    "PairConfig",
    "ProjectConfig",
    "RemovalConfig",
    "ScoringConfig",
    "SourceConfig",
    "SourceIndexConfig",
    "SplitConfig",
    "check_fields",
    "config_from_dict",
    "default_config_path",
    "demo_source",
    "load_project_config",
    "project_config",
    "shard_key",
]

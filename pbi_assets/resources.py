"""Typed resources: where the project config lives and how stage parameters are resolved."""

from __future__ import annotations

from typing import Any

import dagster as dg

from pbi_ml.config import ProjectConfig, SourceConfig, config_from_dict, project_config
from pbi_ml.storage import Storage


class PBIProject(dg.ConfigurableResource):
    """The PBI project from pbi.yaml (`config_path` empty: `$PBI_CONFIG` or ./pbi.yaml): data root,
    shards, sources, per-stage defaults. A non-empty `data_root` overrides the file's."""

    config_path: str = ""
    data_root: str = ""
    device_lease_dir: str = ""  # device leases (node-local); empty = pbi_ml.devices.default_lease_dir()

    def project(self) -> ProjectConfig:
        """pbi.yaml, loaded once per process (the partitions come from the same load)."""
        project = project_config(self.config_path or None)
        if self.data_root:
            from dataclasses import replace

            project = replace(project, data_root=self.data_root)
        return project

    def lease_dir(self) -> str:
        from pbi_ml.devices import default_lease_dir

        return self.device_lease_dir or str(default_lease_dir())

    def storage(self) -> Storage:
        return Storage(self.project().data_root)

    def source(self, name: str) -> SourceConfig:
        return self.project().source(name)

    def stage_values(self, stage: str, run_config: dg.Config | None = None) -> dict[str, Any]:
        """Explicitly set parameters of a stage: pbi.yaml `stages.<stage>`, then run config fields set."""
        values: dict[str, Any] = dict(self.project().stages.get(stage) or {})
        if run_config is not None:
            values.update({k: v for k, v in run_config.model_dump().items() if v is not None})
        return values

    def stage_config(self, stage: str, cls, run_config: dg.Config | None = None):
        """Stage dataclass from: built-in defaults < pbi.yaml `stages.<stage>` < run config fields set."""
        return config_from_dict(cls, self.stage_values(stage, run_config))

"""Where a launched run's steps execute (the `executor:` switch of pbi.yaml, `$PBI_EXECUTOR`),
and the `dagster-k8s/config` op tag of every stage (its pod under the k8s executor).

The pod specs come from `pbi_ml.cluster` (`k8s:` in pbi.yaml); dagster-k8s builds each step's Job from the tag.
"""

from __future__ import annotations

from typing import Any

import dagster as dg

from pbi_assets.partitions import PROJECT
from pbi_ml.errors import ConfigError

K8S_CONFIG_TAG = "dagster-k8s/config"  # dagster_k8s.job.USER_DEFINED_K8S_CONFIG_KEY


def stage_op_tags(stage: str) -> dict[str, Any]:
    """The op tags of `stage`'s asset: its pod's CPU / memory / GPU, GPU node placement, data volume."""
    return {K8S_CONFIG_TAG: PROJECT.k8s.step_k8s_config(stage)}


def executor_for(name: str) -> dg.ExecutorDefinition | None:
    """The executor of every job and backfill the instance launches. None for `multiprocess`:
    Dagster's default executor, which runs each step in its own process (run config can still
    pick in_process), so the default changes nothing."""
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return None
    if name == "k8s":
        try:
            from dagster_k8s import k8s_job_executor
        except ImportError:
            raise ConfigError(
                "executor: k8s needs dagster-k8s: pip install 'pbi[k8s]' (the deploy/Dockerfile image has it)"
            ) from None
        return k8s_job_executor
    raise ConfigError(f"executor: {name!r} is not one of in_process, multiprocess, k8s")

"""Where steps run: the executor switch and the Kubernetes pod of every stage (no Dagster here).

`executor:` in pbi.yaml picks how the Dagster runs that the instance launches (UI, daemon,
backfills, schedules, sensors) execute their steps; `$PBI_EXECUTOR` overrides it:

    in_process    every step in the run's own process, one after the other
    multiprocess  every step in its own process on the run's machine (the default: what
                  Dagster does with no executor set)
    k8s           every step in its own Kubernetes pod (dagster-k8s' `k8s_job_executor`;
                  needs the `pbi[k8s]` extra and a K8sRunLauncher, see deploy/README.md)

`pbi run` always executes in its own process, whatever the switch says.

`k8s:` in pbi.yaml sizes the pods. Every stage has CPU and memory requests and limits and a GPU
count (`STAGE_RESOURCES` holds the defaults; `k8s: {stages: {checkpoint: {gpus: 4}}}` overrides
one field of one stage). A stage with gpus > 0 asks for `nvidia.com/gpu` and gets the GPU node
selector and tolerations; one with gpus > 1 also gets an in-memory `/dev/shm` (an emptyDir of
medium Memory, at most `shm_size_limit`: NCCL's shared-memory transport needs more than the
container runtime's 64 MB default, and it counts against the pod's memory limit); every stage
mounts the data volume (a ReadWriteMany claim) at `data_mount_path`, where the data root lives.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

from pbi_ml.errors import ConfigError

EXECUTORS = ("in_process", "multiprocess", "k8s")
EXECUTOR_ENV = "PBI_EXECUTOR"
DEFAULT_EXECUTOR = "multiprocess"

# Kubernetes quantities: cpu "500m" / "2" / "1.5"; memory "512Mi" / "8Gi" / "1G" / bytes
_CPU = re.compile(r"^(\d+(\.\d+)?|\d+m)$")
_MEMORY = re.compile(r"^\d+(\.\d+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")


@dataclass(frozen=True)
class StageResources:
    """The pod of one stage: requests and limits (Kubernetes quantities) and whole GPUs."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    gpus: int = 0

    def __post_init__(self):
        for name in ("cpu_request", "cpu_limit"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _CPU.match(value):
                raise ConfigError(f"StageResources.{name}: {value!r} is not a CPU quantity such as '500m' or '2'")
        for name in ("memory_request", "memory_limit"):
            value = getattr(self, name)
            if not isinstance(value, str) or not _MEMORY.match(value):
                raise ConfigError(f"StageResources.{name}: {value!r} is not a memory quantity such as '8Gi'")
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 0:
            raise ConfigError(f"StageResources.gpus: {self.gpus!r} is not a whole number >= 0")


def _pod(cpu: str, cpu_limit: str, memory: str, memory_limit: str, gpus: int = 0) -> StageResources:
    return StageResources(cpu, cpu_limit, memory, memory_limit, gpus)


# The defaults per stage (README "Running on Kubernetes" lists them). CPU stages read and write
# Parquet for one shard; GPU stages hold one model (training: the whole diffusion model and its
# optimizer state) plus a batch of images in host memory before they move to the GPU.
STAGE_RESOURCES: dict[str, StageResources] = {
    "source_index": _pod("1", "2", "4Gi", "16Gi"),  # parses the whole annotation file once
    "candidates": _pod("1", "2", "2Gi", "4Gi"),
    "class_scores": _pod("2", "4", "8Gi", "16Gi", gpus=1),
    "removals": _pod("2", "4", "12Gi", "24Gi", gpus=1),
    "removal_scores": _pod("2", "4", "8Gi", "16Gi", gpus=1),
    "pairs": _pod("1", "2", "2Gi", "4Gi"),
    "artifact_audit": _pod("2", "4", "8Gi", "16Gi", gpus=1),
    "descriptions": _pod("2", "4", "16Gi", "32Gi", gpus=1),
    "instructions": _pod("2", "4", "16Gi", "32Gi", gpus=1),
    "pair_judgments": _pod("2", "4", "16Gi", "32Gi", gpus=1),  # a 7B VLM, two images per pair
    "splits": _pod("500m", "1", "1Gi", "2Gi"),
    "catalog": _pod("1", "2", "4Gi", "8Gi"),
    "exports": _pod("1", "2", "4Gi", "8Gi"),
    "checkpoint": _pod("8", "16", "48Gi", "96Gi", gpus=1),  # set gpus to N for N-GPU training
    "evaluation": _pod("2", "4", "16Gi", "32Gi", gpus=1),
}

GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}  # the label NVIDIA's GPU feature discovery sets
DEFAULT_GPU_TOLERATIONS = ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},)
SHM_VOLUME = "dshm"  # the in-memory /dev/shm of multi-GPU pods


@dataclass(frozen=True)
class K8sConfig:
    """`k8s:` in pbi.yaml. `stages` holds every stage, defaults merged with the overrides."""

    data_volume_claim: str = "pbi-data"  # a ReadWriteMany PersistentVolumeClaim
    data_volume_name: str = "pbi-data"  # the volume's name inside the pod
    data_mount_path: str = "/data"  # the data root ($PBI_DATA_ROOT) lies under it
    gpu_node_selector: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_GPU_NODE_SELECTOR))  # GPU pods only
    gpu_tolerations: tuple[dict[str, str], ...] = DEFAULT_GPU_TOLERATIONS  # GPU pods only
    shm_size_limit: str = "16Gi"  # the /dev/shm of a pod with more than one GPU (in its memory limit)
    stages: dict[str, StageResources] = field(default_factory=lambda: dict(STAGE_RESOURCES))  # each stage's pod (below)

    def __post_init__(self):
        for name in ("data_volume_claim", "data_volume_name", "data_mount_path"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"K8sConfig.{name}: {getattr(self, name)!r} is not a non-empty string")
        if not self.data_mount_path.startswith("/"):
            raise ConfigError(f"K8sConfig.data_mount_path: {self.data_mount_path!r} is not an absolute path")
        if not isinstance(self.gpu_node_selector, dict):
            raise ConfigError(f"K8sConfig.gpu_node_selector: {self.gpu_node_selector!r} is not a mapping")
        if not isinstance(self.shm_size_limit, str) or not _MEMORY.match(self.shm_size_limit):
            raise ConfigError(
                f"K8sConfig.shm_size_limit: {self.shm_size_limit!r} is not a memory quantity such as '16Gi'"
            )
        if not all(isinstance(t, dict) for t in self.gpu_tolerations):
            raise ConfigError(f"K8sConfig.gpu_tolerations: {self.gpu_tolerations!r} is not a list of mappings")

    def step_k8s_config(self, stage: str) -> dict[str, Any]:
        """The `dagster-k8s/config` op tag of `stage`: its pod's resources, GPU scheduling, data volume."""
        pod = self.stages[stage]
        requests = {"cpu": pod.cpu_request, "memory": pod.memory_request}
        limits = {"cpu": pod.cpu_limit, "memory": pod.memory_limit}
        pod_spec: dict[str, Any] = {
            "volumes": [
                {"name": self.data_volume_name, "persistent_volume_claim": {"claim_name": self.data_volume_claim}}
            ]
        }
        mounts = [{"name": self.data_volume_name, "mount_path": self.data_mount_path}]
        if pod.gpus:
            requests[GPU_RESOURCE] = limits[GPU_RESOURCE] = str(pod.gpus)
            pod_spec["node_selector"] = dict(self.gpu_node_selector)
            pod_spec["tolerations"] = [dict(t) for t in self.gpu_tolerations]
        if pod.gpus > 1:  # NCCL between the pod's GPUs goes through /dev/shm
            pod_spec["volumes"].append(
                {"name": SHM_VOLUME, "empty_dir": {"medium": "Memory", "size_limit": self.shm_size_limit}}
            )
            mounts.append({"name": SHM_VOLUME, "mount_path": "/dev/shm"})
        return {
            "container_config": {"resources": {"requests": requests, "limits": limits}, "volume_mounts": mounts},
            "pod_spec_config": pod_spec,
        }


def parse_executor(value: Any, where: str = "executor") -> str:
    """`$PBI_EXECUTOR` if set, else the config's value, else the default; must be one of EXECUTORS."""
    env = os.environ.get(EXECUTOR_ENV)
    if env:
        value, where = env.strip(), f"${EXECUTOR_ENV}"
    if value is None:
        return DEFAULT_EXECUTOR
    if value not in EXECUTORS:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(EXECUTORS)}")
    return value


def parse_k8s(raw: Any) -> K8sConfig:
    """The `k8s:` mapping of pbi.yaml -> K8sConfig; unknown keys and stages fail, naming them."""
    if raw is None:
        return K8sConfig()
    if not isinstance(raw, dict):
        raise ConfigError("k8s: must be a mapping")
    raw = dict(raw)
    names = {f.name for f in dataclasses.fields(K8sConfig)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(f"k8s: unknown keys {unknown}; known: {sorted(names)}")
    overrides = raw.pop("stages", None) or {}
    if not isinstance(overrides, dict):
        raise ConfigError("k8s.stages: must be a mapping of stage name to resources")
    stages = dict(STAGE_RESOURCES)
    fields = {f.name for f in dataclasses.fields(StageResources)}
    for stage, values in overrides.items():
        if stage not in stages:
            raise ConfigError(f"k8s.stages: unknown stage {stage!r}; known: {sorted(stages)}")
        if not isinstance(values, dict):
            raise ConfigError(f"k8s.stages.{stage}: must be a mapping of {sorted(fields)}")
        bad = sorted(set(values) - fields)
        if bad:
            raise ConfigError(f"k8s.stages.{stage}: unknown keys {bad}; known: {sorted(fields)}")
        values = {k: str(v) if k != "gpus" and isinstance(v, int | float) else v for k, v in values.items()}
        try:
            stages[stage] = dataclasses.replace(stages[stage], **values)
        except ConfigError as exc:
            raise ConfigError(f"k8s.stages.{stage}: {exc}") from None
    if "gpu_tolerations" in raw:
        raw["gpu_tolerations"] = tuple(raw["gpu_tolerations"] or ())
    try:
        return K8sConfig(**raw, stages=stages)
    except ConfigError as exc:
        raise ConfigError(f"k8s: {exc}") from None

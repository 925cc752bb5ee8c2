"""A pod per step: the Kubernetes Job that dagster-k8s itself builds for each asset's step.

Each asset's op tags are read with dagster-k8s' `get_user_defined_k8s_config` (what its
`k8s_job_executor` does per step) and turned into a `V1Job` by its `construct_dagster_k8s_job`;
the tests look at that Job: GPU limits exactly on the GPU assets, the configured CPU and memory,
the data volume, and a pbi.yaml override changing the spec. The executor switch is checked on the
code location itself (in a subprocess for `PBI_EXECUTOR=k8s` and an overriding pbi.yaml).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
from dagster_k8s.job import get_user_defined_k8s_config

from pbi_assets.definitions import defs
from pbi_assets.execution import K8S_CONFIG_TAG, executor_for
from pbi_ml.cluster import STAGE_RESOURCES, K8sConfig, parse_k8s
from pbi_ml.config import load_project_config
from pbi_ml.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GPU_ASSETS = {"class_scores", "removals", "removal_scores", "artifact_audit", "descriptions", "instructions"}
GPU_ASSETS |= {"pair_judgments", "checkpoint", "evaluation"}


def _assets() -> dict[str, dg.AssetsDefinition]:
    return {
        a.key.to_user_string(): a for a in defs.assets or [] if isinstance(a, dg.AssetsDefinition) and a.is_executable
    }


def _step_job(op_tags) -> dict:
    """The Job dagster-k8s builds for a step with these op tags, as a plain dict (snake_case keys)."""
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="pbi:test", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"],
        job_name="dagster-step-test",
        user_defined_k8s_config=get_user_defined_k8s_config(op_tags),
        component="step_worker",
    )
    return job.to_dict()


def _pod(job: dict) -> tuple[dict, dict]:
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    return spec, container


def test_every_asset_has_a_pod_and_gpu_limits_are_exactly_on_the_gpu_assets():
    assets = _assets()
    assert set(assets) == set(STAGE_RESOURCES), "every asset has its documented pod resources, and only assets"
    gpu_pool = {name for name, a in assets.items() if a.op.pools == {"gpu"}}
    assert gpu_pool == GPU_ASSETS
    for name, asset in assets.items():
        assert K8S_CONFIG_TAG in asset.op.tags, name
        spec, container = _pod(_step_job(asset.op.tags))
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        pod = STAGE_RESOURCES[name]
        assert (limits["cpu"], limits["memory"]) == (pod.cpu_limit, pod.memory_limit), name
        assert (requests["cpu"], requests["memory"]) == (pod.cpu_request, pod.memory_request), name
        if name in GPU_ASSETS:
            assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == "1", name
            assert spec["node_selector"] == {"nvidia.com/gpu.present": "true"}, name
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in [
                {k: v for k, v in t.items() if v is not None} for t in spec["tolerations"]
            ], name
        else:
            assert "nvidia.com/gpu" not in limits and "nvidia.com/gpu" not in requests, name
            assert spec["node_selector"] is None and spec["tolerations"] is None, name
        # the data volume: the ReadWriteMany claim, mounted where the data root lives
        assert [(m["name"], m["mount_path"]) for m in container["volume_mounts"]] == [("pbi-data", "/data")], name
        [volume] = spec["volumes"]
        assert volume["name"] == "pbi-data" and volume["persistent_volume_claim"]["claim_name"] == "pbi-data", name
        assert container["image"] == "pbi:test" and container["args"] == ["dagster", "api", "execute_step"]


OVERRIDE = {
    "num_shards": 1,
    "executor": "in_process",  # $PBI_EXECUTOR=k8s below wins over it
    "k8s": {
        "data_volume_claim": "lab-nfs",
        "data_mount_path": "/mnt/pbi",
        "gpu_node_selector": {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"},
        "shm_size_limit": "8Gi",
        "stages": {
            "checkpoint": {"gpus": 8, "memory_limit": "400Gi", "cpu_request": 32},
            "candidates": {"cpu_limit": "500m"},
        },
    },
}


def _override_file(tmp_path: Path) -> Path:
    path = tmp_path / "pbi.yaml"
    path.write_text(yaml.safe_dump(OVERRIDE))
    return path


def _check_override(checkpoint_tags: dict, candidates_tags: dict) -> None:
    spec, container = _pod(_step_job(checkpoint_tags))
    limits, requests = container["resources"]["limits"], container["resources"]["requests"]
    assert limits["nvidia.com/gpu"] == requests["nvidia.com/gpu"] == "8"  # N GPUs for the training step
    assert limits["memory"] == "400Gi" and requests["cpu"] == "32"
    assert limits["cpu"] == STAGE_RESOURCES["checkpoint"].cpu_limit, "fields not overridden keep their default"
    assert spec["node_selector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert spec["volumes"][0]["persistent_volume_claim"]["claim_name"] == "lab-nfs"
    assert container["volume_mounts"][0]["mount_path"] == "/mnt/pbi"
    _assert_shm(spec, container, "8Gi")  # 8 GPUs: NCCL's in-memory /dev/shm
    spec, container = _pod(_step_job(candidates_tags))
    assert container["resources"]["limits"]["cpu"] == "500m"
    assert "nvidia.com/gpu" not in container["resources"]["limits"]
    _assert_shm(spec, container, None)


def _assert_shm(spec: dict, container: dict, size_limit: str | None) -> None:
    """An in-memory emptyDir at /dev/shm of `size_limit` in the step pod, or (None) no /dev/shm volume."""
    shm = [m["name"] for m in container["volume_mounts"] if m["mount_path"] == "/dev/shm"]
    if size_limit is None:
        assert shm == [], container["volume_mounts"]
        return
    [name] = shm
    [volume] = [v for v in spec["volumes"] if v["name"] == name]
    assert volume["empty_dir"] == {"medium": "Memory", "size_limit": size_limit}, volume


def test_dev_shm_in_memory_only_on_multi_gpu_step_pods():
    """The checkpoint step with 4 GPUs gets /dev/shm in memory (in the Job dagster-k8s builds from its
    op tags); the single-GPU and CPU steps keep the container's default."""
    k8s = parse_k8s({"stages": {"checkpoint": {"gpus": 4}}})
    spec, container = _pod(_step_job({K8S_CONFIG_TAG: json.dumps(k8s.step_k8s_config("checkpoint"))}))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    _assert_shm(spec, container, K8sConfig().shm_size_limit)
    for asset in _assets().values():  # the defaults: one GPU at most per stage
        spec, container = _pod(_step_job(asset.op.tags))
        _assert_shm(spec, container, None)


def test_a_config_override_changes_the_pod_spec(tmp_path):
    k8s = load_project_config(_override_file(tmp_path)).k8s
    _check_override(
        {K8S_CONFIG_TAG: json.dumps(k8s.step_k8s_config("checkpoint"))},
        {K8S_CONFIG_TAG: json.dumps(k8s.step_k8s_config("candidates"))},
    )


def test_the_code_location_takes_the_executor_and_pods_from_config_and_env(tmp_path):
    """The real code location, loaded as a code server loads it: PBI_EXECUTOR=k8s makes every job
    (the implicit asset job of backfills, retraining_job) a k8s_job_executor job, and the op tags
    are the overriding pbi.yaml's."""
    script = (
        "import json, warnings; warnings.simplefilter('ignore')\n"
        "from pbi_assets.definitions import defs\n"
        "jobs = [defs.resolve_implicit_global_asset_job_def(), defs.resolve_job_def('retraining_job')]\n"
        "ops = {a.key.to_user_string(): dict(a.op.tags) for a in defs.assets}\n"
        "print(json.dumps({'executors': [j.executor_def.name for j in jobs], 'ops': ops}))\n"
    )
    env = dict(os.environ, PBI_CONFIG=str(_override_file(tmp_path)), PBI_EXECUTOR="k8s")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["executors"] == ["k8s", "k8s"]
    _check_override(out["ops"]["checkpoint"], out["ops"]["candidates"])


def test_without_an_executor_setting_jobs_use_dagsters_default_executor():
    """No `executor:` in the session pbi.yaml, no $PBI_EXECUTOR: Dagster's own default
    (multi_or_in_process: a process per step); each named executor maps to its Dagster executor."""
    assert os.environ.get("PBI_EXECUTOR") is None
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == "multi_or_in_process_executor"
    assert executor_for("multiprocess") is None
    assert executor_for("in_process") is dg.in_process_executor
    k8s = executor_for("k8s")
    assert k8s is not None and k8s.name == "k8s"


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"executor": "celery"}, "executor: 'celery' is not one of in_process, multiprocess, k8s"),
        ({"k8s": {"stages": {"removal": {"gpus": 1}}}}, "k8s.stages: unknown stage 'removal'"),
        ({"k8s": {"stages": {"removals": {"gpus": -1}}}}, "k8s.stages.removals: StageResources.gpus: -1"),
        ({"k8s": {"stages": {"removals": {"memory_limit": "lots"}}}}, "StageResources.memory_limit: 'lots'"),
        ({"k8s": {"stages": {"removals": {"vram": "80Gi"}}}}, "k8s.stages.removals: unknown keys ['vram']"),
        ({"k8s": {"data_mount_path": "data"}}, "K8sConfig.data_mount_path: 'data' is not an absolute path"),
        ({"k8s": {"volume": "x"}}, "k8s: unknown keys ['volume']"),
        ({"k8s": {"shm_size_limit": "big"}}, "K8sConfig.shm_size_limit: 'big' is not a memory quantity"),
    ],
)
def test_bad_executor_and_pod_config_fail_naming_the_field(tmp_path, raw, message):
    path = tmp_path / "pbi.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as err:
        load_project_config(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_pbi_executor_env_overrides_and_is_validated(tmp_path, monkeypatch):
    path = tmp_path / "pbi.yaml"
    path.write_text("executor: in_process\n")
    assert load_project_config(path).executor == "in_process"
    monkeypatch.setenv("PBI_EXECUTOR", "k8s")
    assert load_project_config(path).executor == "k8s"
    monkeypatch.setenv("PBI_EXECUTOR", "gpu")
    with pytest.raises(ConfigError, match=r"\$PBI_EXECUTOR: 'gpu' is not one of"):
        load_project_config(path)


def test_numbers_in_yaml_become_quantities_and_defaults_are_kept():
    k8s = parse_k8s({"stages": {"splits": {"cpu_request": 1, "memory_request": "512Mi"}}})
    assert k8s.stages["splits"].cpu_request == "1" and k8s.stages["splits"].memory_request == "512Mi"
    assert k8s.stages["removals"] == K8sConfig().stages["removals"] == STAGE_RESOURCES["removals"]

"""deploy/: the Dockerfile, the Helm values and the manifests agree with the code.

Parsed, not built (no registry, no cluster here): every YAML file parses; the image's command and
the chart's code server serve a module that exists and holds the Definitions; every environment
variable they set is one the code (or the library named) reads; the data volume is the one the
steps' op tags mount, a ReadWriteMany claim, where PBI_DATA_ROOT lies; and a step pod built by
dagster-k8s from these values plus the step's op tags has that volume exactly once, the
stage's own resources and the image's non-root user. Dagster loads the instance dagster.yaml the
values give (the chart's rendering of it, when helm is in /tmp/pbi-helm and the chart in
../shared/tools/dagster-chart); the code server mounts that instance where its DAGSTER_HOME points;
the image has one CUDA stack, its dependencies in layers before the code, and a fixed non-root
user; the Postgres password comes from a Secret.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
# variables read by a library, not by our code: where they are read
LIBRARY_VARS = {"HF_HOME": "huggingface_hub.constants", "DAGSTER_HOME": "dagster._core.instance.config"}
PBI_SOURCES = [p for folder in ("pbi_ml", "pbi_assets") for p in (ROOT / folder).rglob("*.py")]


CHART = ROOT.parent / "shared" / "tools" / "dagster-chart"  # a subset of the official chart, beside CI's clone
HELM = Path("/tmp/pbi-helm/helm")  # where ../shared/tools/helm_instance_check installs real helm


@functools.cache
def _rendered() -> tuple[dict, ...]:
    """The objects `helm template pbi <chart> -n pbi -f deploy/values.yaml` renders (skips without helm)."""
    if not (HELM.is_file() and CHART.is_dir()):
        pytest.skip(f"no helm at {HELM} or no chart at {CHART} (../shared/tools/helm_instance_check installs helm)")
    done = subprocess.run(
        [str(HELM), "template", "pbi", str(CHART), "-n", "pbi", "-f", str(DEPLOY / "values.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _rendered_instance() -> str:
    [config_map] = [d for d in _rendered() if d["kind"] == "ConfigMap" and "dagster.yaml" in (d.get("data") or {})]
    assert config_map["metadata"]["name"] == "pbi-dagster-instance"
    return config_map["data"]["dagster.yaml"]


def _values() -> dict:
    return yaml.safe_load((DEPLOY / "values.yaml").read_text())


def _deployment() -> dict:
    [deployment] = _values()["dagster-user-deployments"]["deployments"]
    return deployment


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _dockerfile_env() -> dict[str, str]:
    env = {}
    for instruction, args in _dockerfile():
        if instruction == "ENV":
            for item in shlex.split(args):
                name, _, value = item.partition("=")
                env[name] = value
    return env


def _read_by_the_code(name: str) -> bool:
    if name in LIBRARY_VARS:
        spec = importlib.util.find_spec(LIBRARY_VARS[name])
        return spec is not None and spec.origin is not None and f'"{name}"' in Path(spec.origin).read_text()
    return any(f'"{name}"' in path.read_text() for path in PBI_SOURCES)


def _code_location(args: list[str]) -> dg.Definitions:
    """The Definitions that `-m MODULE -a ATTR` names (what the code server loads)."""
    module = args[args.index("-m") + 1]
    attribute = args[args.index("-a") + 1]
    assert importlib.util.find_spec(module) is not None, f"{module} does not exist"
    defs = getattr(importlib.import_module(module), attribute)
    assert isinstance(defs, dg.Definitions)
    return defs


@pytest.mark.parametrize("name", ["values.yaml", "pvc.yaml", "dagster-postgres.yaml"])
def test_the_yaml_files_parse(name):
    assert isinstance(yaml.safe_load((DEPLOY / name).read_text()), dict)


def test_the_dockerfile_installs_the_project_non_editable_and_serves_the_code_location():
    steps = _dockerfile()
    installs = [args for instruction, args in steps if instruction == "RUN" and "pip install" in args]
    project = [args for args in installs if "/tmp/pbi-src" in args]
    assert len(project) == 1 and "--no-deps" in project[0], "the project alone: its dependencies are a layer below"
    assert " -e " not in project[0] and "--editable" not in project[0], "non-editable"
    extras = set(_dockerfile_args()["PBI_EXTRAS"].split(","))
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = set(re.findall(r"^(\w+) = \[", pyproject.split("[project.optional-dependencies]")[1], re.M))
    assert extras == {"k8s", "postgres"} and extras <= declared, declared
    copied = [shlex.split(args)[:-1] for instruction, args in steps if instruction == "COPY"]
    sources = {source for group in copied for source in group}
    assert {"pyproject.toml", "README.md", "pbi_ml", "pbi_assets"} <= sources
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    assert all(f"!{source}" in ignore for source in sources), "the build context lets every COPY source in"
    [cmd] = [json.loads(args) for instruction, args in steps if instruction == "CMD"]
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert _code_location(cmd).resolve_asset_graph().get_all_asset_keys()


def _dockerfile_args() -> dict[str, str]:
    return dict(args.partition("=")[::2] for instruction, args in _dockerfile() if instruction == "ARG")


def test_the_image_has_one_cuda_stack_torchs_wheels_of_one_flavour():
    """No CUDA in the base image: the CUDA libraries are the torch wheels' own, from PyTorch's index
    for one flavour (TORCH_CUDA), pinned while the other dependencies install from PyPI."""
    steps = _dockerfile()
    [base] = [args for instruction, args in steps if instruction == "FROM"]
    assert base.startswith("python:") and "slim" in base and "cuda" not in base.lower(), base
    text = " ".join(args for _, args in steps).lower()
    assert "nvidia/cuda" not in text and not re.search(r"apt-get install[^&]*cuda", text), "no second CUDA"
    assert re.fullmatch(r"cu\d{3}", _dockerfile_args()["TORCH_CUDA"])
    runs = [args for instruction, args in steps if instruction == "RUN"]
    [torch_install] = [r for r in runs if "download.pytorch.org" in r]
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}"' in torch_install
    assert "-r /tmp/pbi-deps/torch.txt" in torch_install and "> /tmp/pbi-deps/torch-constraints.txt" in torch_install
    [deps_install] = [r for r in runs if "-r /tmp/pbi-deps/deps.txt" in r]
    assert "-c /tmp/pbi-deps/torch-constraints.txt" in deps_install, "PyPI's torch (another CUDA) cannot replace it"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the image's Python (3.11) reads pyproject.toml with tomllib")
def test_the_dependency_layer_comes_before_the_source_and_holds_pyprojects_requirements(tmp_path):
    """The requirements step, run as the image runs it: every dependency and the extras' from
    pyproject.toml, torch and torchvision apart; only pyproject.toml is copied in before the
    dependencies install, so a change to the code reinstalls none of them."""
    import tomllib

    steps = _dockerfile()
    [requirements] = [args for instruction, args in steps if instruction == "RUN" and "tomllib" in args]
    where = tmp_path / "deps"
    where.mkdir()
    (where / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    env = dict(os.environ, PBI_EXTRAS=_dockerfile_args()["PBI_EXTRAS"])
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["sh", "-c", requirements.replace("/tmp/pbi-deps", str(where))], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    expected = project["dependencies"] + [r for e in ("k8s", "postgres") for r in project["optional-dependencies"][e]]
    assert (where / "deps.txt").read_text().splitlines() == expected
    assert (where / "torch.txt").read_text().splitlines() == [
        r for r in project["dependencies"] if re.match(r"(torch|torchvision)\b(?!-)", r) and not r.startswith("torch_")
    ]
    order = [(instruction, args) for instruction, args in steps]
    deps_at = next(i for i, (ins, args) in enumerate(order) if ins == "RUN" and "-r /tmp/pbi-deps/deps.txt" in args)
    copies_before = [args for ins, args in order[:deps_at] if ins == "COPY"]
    assert copies_before == ["pyproject.toml /tmp/pbi-deps/pyproject.toml"], copies_before
    code_at = next(i for i, (ins, args) in enumerate(order) if ins == "COPY" and "pbi_ml" in args)
    assert code_at > deps_at


def test_the_image_runs_as_a_fixed_non_root_user_the_values_run_every_pod_as():
    steps = _dockerfile()
    [user] = [args for instruction, args in steps if instruction == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid == uid, "numeric, so that runAsNonRoot can check it"
    assert any(f"--uid {uid}" in args for instruction, args in steps if instruction == "RUN")
    assert [i for i, (ins, _) in enumerate(steps) if ins == "USER"][0] > max(
        i for i, (ins, args) in enumerate(steps) if ins == "RUN"
    ), "nothing runs as root after USER"
    home = _dockerfile_env()["DAGSTER_HOME"]
    assert any(home in args and f"chown -R {uid}:{gid}" in args for ins, args in steps if ins == "RUN"), (
        "DAGSTER_HOME is the user's (the instance file is mounted into it)"
    )
    expected = {"runAsNonRoot": True, "runAsUser": int(uid), "runAsGroup": int(gid), "fsGroup": int(gid)}
    deployment = _deployment()
    launcher = _values()["runLauncher"]["config"]["k8sRunLauncher"]
    for name, context in (
        ("the code server", deployment["podSecurityContext"]),
        ("run and step pods", launcher["runK8sConfig"]["podSpecConfig"]["securityContext"]),
    ):
        assert expected.items() <= context.items(), name
        assert context.get("fsGroupChangePolicy") == "OnRootMismatch", f"{name}: no chown of the whole volume"
    for context in (deployment["securityContext"], launcher["securityContext"]):
        assert context["allowPrivilegeEscalation"] is False
    assert {e["name"]: e["value"] for e in deployment["env"]}["DAGSTER_HOME"] == home


def test_the_postgres_password_comes_from_a_secret_not_the_values():
    values = _values()
    secret = values["global"]["postgresqlSecretName"]
    assert secret and values["generatePostgresqlPasswordSecret"] is False, "the chart makes no Secret from values"
    assert values["postgresql"].get("existingSecret") == secret, "the bundled PostgreSQL reads the same Secret"

    def passwords(node, path=()):
        if isinstance(node, dict):
            for key, value in node.items():
                if str(key).lower().endswith("password") and not isinstance(value, dict | list):
                    yield ".".join((*path, str(key)))
                yield from passwords(value, (*path, str(key)))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from passwords(value, (*path, str(i)))

    assert list(passwords(values)) == [], "no literal password in values.yaml"
    readme = (DEPLOY / "README.md").read_text()
    assert f"kubectl create secret generic {secret} " in readme and "postgresql-password" in readme
    for doc in (DEPLOY / "README.md", ROOT / "README.md", ROOT / "docs" / "operations.md"):
        assert "postgresqlPassword" not in doc.read_text(), doc
    try:
        docs = _rendered()
    except pytest.skip.Exception:
        return
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    [pg] = [e for e in container["env"] if e["name"] == "DAGSTER_PG_PASSWORD"]
    assert pg["valueFrom"]["secretKeyRef"] == {"name": secret, "key": "postgresql-password"}
    assert yaml.safe_load(_rendered_instance())["run_launcher"]["config"]["postgres_password_secret"] == secret


def test_every_env_var_the_image_and_the_values_set_is_read_by_the_code():
    image_env = _dockerfile_env()
    values_env = {item["name"]: item["value"] for item in _deployment()["env"]}
    names = {n for n in image_env if n.startswith(("PBI_", "DAGSTER_", "HF_"))} | set(values_env)
    assert names, "nothing to check"
    unread = sorted(name for name in names if not _read_by_the_code(name))
    assert not unread, f"set by deploy/ but read nowhere: {unread}"
    assert image_env["PBI_EXECUTOR"] == values_env["PBI_EXECUTOR"] == "k8s"
    from pbi_ml.cluster import EXECUTOR_ENV
    from pbi_ml.devices import LEASE_DIR_ENV

    assert {EXECUTOR_ENV, LEASE_DIR_ENV, "PBI_CONFIG", "PBI_DATA_ROOT"} <= set(values_env)


def test_the_chart_values_serve_the_code_location_and_configure_the_instance():
    values = _values()
    deployment = _deployment()
    assert (
        deployment["codeServerArgs"]
        == json.loads(next(args for instruction, args in _dockerfile() if instruction == "CMD"))[-4:]
    ), "the chart's code server serves what the image's CMD does"
    _code_location(deployment["codeServerArgs"])
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True, "env and volumes reach run/step pods"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    daemon = values["dagsterDaemon"]
    assert daemon["enabled"] and daemon["runCoordinator"]["enabled"]
    assert daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runMonitoring"]["enabled"] is True
    concurrency = values["concurrency"]
    assert concurrency["enabled"] and concurrency["pools"]["defaultLimit"] == 1
    assert concurrency["runs"]["maxConcurrentRuns"] > 0, "a backfill queues instead of starting every run"
    # runs whose steps would only wait for a pool slot stay queued
    assert concurrency["pools"]["granularity"] == "op" and concurrency["pools"]["opGranularityRunBuffer"] == 0
    postgres = values["postgresql"]
    assert postgres["postgresqlScheme"] == "postgresql+psycopg2"
    assert postgres["enabled"] or postgres["postgresqlHost"], "the bundled Postgres or an external one"


def test_the_data_volume_is_the_one_the_steps_mount_and_holds_the_data_root():
    from pbi_ml.cluster import K8sConfig

    k8s = K8sConfig()  # the defaults: what a pbi.yaml without `k8s:` gives every step
    deployment = _deployment()
    env = {item["name"]: item["value"] for item in deployment["env"]}
    launcher = _values()["runLauncher"]["config"]["k8sRunLauncher"]
    for where in (deployment, launcher):
        [volume] = [v for v in where["volumes"] if v["name"] == k8s.data_volume_name]
        assert volume["persistentVolumeClaim"]["claimName"] == k8s.data_volume_claim
        [mount] = [m for m in where["volumeMounts"] if m["name"] == k8s.data_volume_name]
        assert mount["mountPath"] == k8s.data_mount_path
    assert env["PBI_DATA_ROOT"].startswith(k8s.data_mount_path.rstrip("/") + "/")
    assert not env["PBI_LEASE_DIR"].startswith(k8s.data_mount_path), "device leases are node-local"
    config_mount = next(m for m in deployment["volumeMounts"] if m["name"] == "pbi-config")
    assert env["PBI_CONFIG"].startswith(config_mount["mountPath"] + "/")
    pvc = yaml.safe_load((DEPLOY / "pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim" and pvc["metadata"]["name"] == k8s.data_volume_claim
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


@pytest.mark.parametrize("stage", ["removals", "checkpoint", "splits"])
def test_a_step_pod_from_these_values_and_the_op_tags_has_one_data_volume_and_the_stage_resources(stage):
    """The merge dagster-k8s' executor does for a step: the run launcher's config, the code
    location's (includeConfigInLaunchedRuns), then the step's op tags."""
    from dagster_k8s import DagsterK8sJobConfig, construct_dagster_k8s_job
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, get_user_defined_k8s_config

    from pbi_assets.definitions import defs
    from pbi_ml.cluster import STAGE_RESOURCES

    launcher = _values()["runLauncher"]["config"]["k8sRunLauncher"]
    deployment = _deployment()
    context = K8sContainerContext(
        volumes=launcher["volumes"],
        volume_mounts=launcher["volumeMounts"],
        resources=launcher["resources"],
        security_context=launcher["securityContext"],
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            {"pod_spec_config": launcher["runK8sConfig"]["podSpecConfig"]}  # what the chart renders it to
        ),
    )
    context = context.merge(
        K8sContainerContext.create_from_config(
            {
                "k8s": {
                    "env": deployment["env"],
                    "volumes": deployment["volumes"],
                    "volume_mounts": deployment["volumeMounts"],
                }
            }
        )
    )
    tags = defs.resolve_assets_def(stage).op.tags
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(tags)))
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(  # the run launcher's own mount of the instance, as the chart configures it
            job_image="registry.example.com/pbi:0.1.0",
            dagster_home=_run_launcher_home(),
            instance_config_map="pbi-dagster-instance",
        ),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{stage}",
        user_defined_k8s_config=context.run_k8s_config,
    ).to_dict()
    spec = job["spec"]["template"]["spec"]
    [container] = spec["containers"]
    # a valid pod: volume names and mount paths unique (the code server's instance mount is here too)
    assert len({v["name"] for v in spec["volumes"]}) == len(spec["volumes"]), spec["volumes"]
    mount_paths = [m["mount_path"] for m in container["volume_mounts"]]
    assert len(set(mount_paths)) == len(mount_paths), mount_paths
    homes = [e["value"] for e in container["env"] if e["name"] == "DAGSTER_HOME"]
    assert f"{homes[-1]}/dagster.yaml" in mount_paths, "the DAGSTER_HOME that wins (the last) holds the instance"
    # the image's non-root user, from the run launcher's config
    security = spec["security_context"]
    assert (security["run_as_non_root"], security["run_as_user"], security["fs_group"]) == (True, 10001, 10001)
    assert container["security_context"]["allow_privilege_escalation"] is False
    assert [v["name"] for v in spec["volumes"]].count("pbi-data") == 1
    assert [(m["name"], m["mount_path"]) for m in container["volume_mounts"]].count(("pbi-data", "/data")) == 1
    assert {"pbi-config"} <= {v["name"] for v in spec["volumes"]}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PBI_EXECUTOR"] == "k8s" and env["PBI_DATA_ROOT"] == "/data/pbi"
    pod = STAGE_RESOURCES[stage]
    resources = container["resources"]
    assert resources["requests"]["cpu"] == pod.cpu_request and resources["limits"]["memory"] == pod.memory_limit
    assert resources["limits"].get("nvidia.com/gpu") == (str(pod.gpus) if pod.gpus else None)


# ---- the instance: what the chart renders from these values, loaded by Dagster


def _instance_from_values(values: dict) -> dict:
    """The parts of the instance dagster.yaml that the chart renders from the values we set
    (templates/helpers/instance/_run-coordinator.tpl, _concurrency.tpl, configmap-instance.yaml),
    for machines without helm and the chart: the run coordinator, the pools and run queue, run
    monitoring, the run launcher and the Postgres storage."""
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"].get("queuedRunCoordinator") or {}
    coordinator: dict = {}
    if queued.get("maxConcurrentRuns") is not None:
        coordinator["max_concurrent_runs"] = queued["maxConcurrentRuns"]
    if queued.get("tagConcurrencyLimits"):
        coordinator["tag_concurrency_limits"] = queued["tagConcurrencyLimits"]
    block = queued.get("blockOpConcurrencyLimitedRuns")
    if block:
        coordinator["block_op_concurrency_limited_runs"] = {
            "enabled": block["enabled"],
            "op_concurrency_slot_buffer": block.get("opConcurrencySlotBuffer"),
        }
    instance: dict = {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": daemon["runCoordinator"]["type"],
            "config": coordinator,
        },
        "run_monitoring": {
            "enabled": daemon["runMonitoring"]["enabled"],
            "start_timeout_seconds": daemon["runMonitoring"]["startTimeoutSeconds"],
            "poll_interval_seconds": daemon["runMonitoring"]["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": daemon["runMonitoring"]["freeSlotsAfterRunEndSeconds"],
            "max_resume_run_attempts": daemon["runMonitoring"]["maxResumeRunAttempts"],
        },
        "run_launcher": {"module": "dagster_k8s", "class": values["runLauncher"]["type"], "config": {}},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }
    postgres = values["postgresql"]
    pg = {
        "postgres_db": {
            "username": postgres["postgresqlUsername"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": postgres["postgresqlHost"] or "pbi-postgresql",
            "db_name": postgres["postgresqlDatabase"],
            "port": postgres["service"]["port"],
            "scheme": postgres["postgresqlScheme"],
        }
    }
    for storage, module, cls in (
        ("run_storage", "dagster_postgres.run_storage", "PostgresRunStorage"),
        ("event_log_storage", "dagster_postgres.event_log", "PostgresEventLogStorage"),
        ("schedule_storage", "dagster_postgres.schedule_storage", "PostgresScheduleStorage"),
    ):
        instance[storage] = {"module": module, "class": cls, "config": pg}
    concurrency = values.get("concurrency") or {}
    if concurrency.get("enabled"):
        pools = {
            key: concurrency.get("pools", {}).get(name)
            for key, name in (
                ("default_limit", "defaultLimit"),
                ("granularity", "granularity"),
                ("op_granularity_run_buffer", "opGranularityRunBuffer"),
            )
            if concurrency.get("pools", {}).get(name) is not None
        }
        runs = {}
        if (concurrency.get("runs") or {}).get("maxConcurrentRuns") is not None:
            runs["max_concurrent_runs"] = concurrency["runs"]["maxConcurrentRuns"]
        instance["concurrency"] = {k: v for k, v in (("pools", pools), ("runs", runs)) if v}
    return instance


def _load_instance_config(tmp_path: Path, text: str) -> dict:
    """Dagster's own load and validation of a dagster.yaml (what every Dagster process does at start)."""
    from dagster._core.instance.config import dagster_instance_config

    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(text)
    config, _ = dagster_instance_config(str(home))
    return config


def test_dagster_accepts_the_instance_these_values_imply(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "x")
    config = _load_instance_config(tmp_path, yaml.safe_dump(_instance_from_values(_values())))
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 16
    assert config["concurrency"]["pools"]["default_limit"] == 1
    coordinator = config["run_coordinator"]["config"] or {}
    assert not {"max_concurrent_runs", "block_op_concurrency_limited_runs"} & set(coordinator), (
        "the run limit is in concurrency.runs only"
    )


def test_the_run_limit_in_the_run_coordinator_beside_concurrency_is_refused(tmp_path, monkeypatch):
    """The check above can fail: the same values with the queue's own run limit are rejected."""
    import dagster as dg

    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "x")
    values = _values()
    values["concurrency"].pop("runs")
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"] = {"maxConcurrentRuns": 16}
    with pytest.raises(dg.DagsterInvalidConfigError, match="incompatible with the `concurrency > runs` config"):
        _load_instance_config(tmp_path, yaml.safe_dump(_instance_from_values(values)))


def test_dagster_accepts_the_instance_helm_renders(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", "x")
    config = _load_instance_config(tmp_path, _rendered_instance())
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == _values()["concurrency"]["runs"]["maxConcurrentRuns"]
    assert not {"max_concurrent_runs", "block_op_concurrency_limited_runs"} & set(
        config["run_coordinator"]["config"] or {}
    )
    implied = _instance_from_values(_values())
    for key in ("concurrency", "run_monitoring"):
        assert config[key] == implied[key], f"the test's reading of the values agrees with the chart on {key}"


def _code_server_pod() -> tuple[dict, dict, str]:
    """(pod spec, container, instance ConfigMap name) of the code server: from helm's rendering when
    helm and the chart are here, else from the values (volumes, mounts and env go in unchanged)."""
    try:
        docs = _rendered()
    except pytest.skip.Exception:
        deployment = _deployment()
        pod = {"volumes": deployment["volumes"]}
        container = {"volumeMounts": deployment["volumeMounts"], "env": deployment["env"]}
        return pod, container, "pbi-dagster-instance"  # the chart's name for release `pbi`
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [config_map] = [d for d in docs if d["kind"] == "ConfigMap" and "dagster.yaml" in (d.get("data") or {})]
    return pod, container, config_map["metadata"]["name"]


def _run_launcher_home() -> str:
    """Where the run launcher mounts the instance in run and step pods (its DAGSTER_HOME)."""
    if HELM.is_file() and CHART.is_dir():
        return yaml.safe_load(_rendered_instance())["run_launcher"]["config"]["dagster_home"]
    return "/opt/dagster/dagster_home"  # the chart's global.dagsterHome


def test_the_code_server_mounts_the_clusters_instance_read_only_where_dagster_home_points():
    """`kubectl exec ... pbi backfill` in the code server uses the deployment's instance."""
    pod, container, instance_map = _code_server_pod()
    [volume] = [v for v in pod["volumes"] if (v.get("configMap") or {}).get("name") == instance_map]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    [home] = [e["value"] for e in container["env"] if e["name"] == "DAGSTER_HOME"]  # env beats the chart's envFrom
    assert (mount["mountPath"], mount.get("subPath")) in {(f"{home}/dagster.yaml", "dagster.yaml"), (home, None)}
    run_launcher_home = _run_launcher_home()
    assert not mount["mountPath"].startswith(run_launcher_home + "/"), (
        "its own path: run pods also get the run launcher's mount of the instance"
    )
    assert volume["name"] != "dagster-instance", "the run launcher's own volume name in run and step pods"

"""The Dagster instance `pbi` runs against: $DAGSTER_HOME (created from the packaged template for a
local instance; a deployment's in a pod), and what is done to it before runs are launched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pbi_assets.cli.errors import UserError
from pbi_assets.pools import initialize_pools, pools_of
from pbi_assets.run_health import cleanup_dead_runs

UI_URL = "http://127.0.0.1:3000"  # where `dagster dev -w workspace.yaml` serves the UI by default


def in_cluster() -> bool:
    """A deployment's instance is expected: running in a Kubernetes pod (the kubelet sets
    KUBERNETES_SERVICE_HOST in every container) or with steps as pods ($PBI_EXECUTOR=k8s)."""
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) or os.environ.get("PBI_EXECUTOR", "").strip() == "k8s"


def ensure_dagster_home() -> Path:
    """$DAGSTER_HOME (default ./.dagster_home), with its dagster.yaml. Locally a missing one is made
    from the packaged SQLite template; where a deployment's instance is expected (`in_cluster`) a
    missing one is an error naming the file to mount, never a private SQLite instance."""
    home = Path(os.environ.get("DAGSTER_HOME") or Path.cwd() / ".dagster_home").resolve()
    target = home / "dagster.yaml"
    if not target.exists():
        if in_cluster():
            raise UserError(
                f"no Dagster instance: {target} does not exist; in Kubernetes pbi uses the deployment's instance, "
                "so mount the chart's instance ConfigMap (<release>-dagster-instance, key dagster.yaml) there "
                "and set DAGSTER_HOME (deploy/values.yaml does both for the code server); for a private local "
                "instance instead, copy the template pbi_assets/dagster.yaml there yourself"
            )
        home.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(__file__).parents[1] / "dagster.yaml", target)  # pbi_assets/dagster.yaml
    os.environ["DAGSTER_HOME"] = str(home)
    return home


def starts_own_daemon(instance) -> bool:
    """Whether `pbi backfill --wait` may start a `dagster-daemon` when none heartbeats: only for a
    local instance, i.e. outside a cluster (`in_cluster`) and with Dagster's DefaultRunLauncher
    (runs are processes on this machine). A deployment's instance (K8sRunLauncher, or any other
    launcher) has its own daemon; pbi only follows the backfill there."""
    import dagster as dg

    return not in_cluster() and type(instance.run_launcher) is dg.DefaultRunLauncher


def prepare_instance(instance) -> None:
    """Before launching runs (`pbi run`, a backfill): fail the runs of `pbi run` whose process died
    and free the pool slots they hold, one line each (see `pbi_assets.run_health`), and give every
    pool the definitions use its limit row (see `pbi_assets.pools`: two processes starting at once on
    a fresh Postgres instance would otherwise race to create it, and one run would die)."""
    from pbi_assets.definitions import defs

    for line in cleanup_dead_runs(instance):
        print(f"  {line}")
    initialize_pools(instance, pools_of(defs.assets or []))

"""The Dagster instance `pbi` runs against: $DAGSTER_HOME (created from the packaged template for a
local instance; a deployment's in a pod), and what is done to it before runs are launched."""

from __future__ import annotations

import os
import shutil
import time
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


# Postgres error codes of two processes creating a new database's tables at once: 42P07 the table,
# 42710 its row type (the other process committed between Postgres's two name checks), 23505 a
# catalog row. Dagster retries only the first two kinds itself.
_CONCURRENT_CREATE_CODES = frozenset({"42P07", "42710", "23505"})


def open_instance(attempts: int = 6):
    """The instance in $DAGSTER_HOME. Two processes opening a new Postgres database at once both
    create its tables, and the loser fails with an error Dagster does not always retry: open it
    again (the retry finds the tables); any other error, or `attempts` failures, propagates."""
    import dagster as dg

    for attempt in range(attempts):
        try:
            return dg.DagsterInstance.get()
        except Exception as exc:
            if not postgres_error_codes(exc) & _CONCURRENT_CREATE_CODES or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def postgres_error_codes(exc: BaseException) -> set[str]:
    """The Postgres error codes (SQLSTATE) in `exc` and the exceptions it was raised from: Dagster
    wraps the driver's error (DagsterPostgresException from sqlalchemy's from psycopg2's)."""
    codes = set()
    cause: BaseException | None = exc
    while cause is not None:
        code = getattr(cause, "pgcode", None)
        if code:
            codes.add(code)
        cause = cause.__cause__ or cause.__context__
    return codes


def starts_own_daemon(instance) -> bool:
    """Whether `pbi backfill --wait` may start a `dagster-daemon` when none heartbeats: only for a
    local instance (outside a cluster, Dagster's DefaultRunLauncher). A deployment has its own."""
    import dagster as dg

    return not in_cluster() and type(instance.run_launcher) is dg.DefaultRunLauncher


def prepare_instance(instance) -> None:
    """Before launching runs: fail the dead runs of `pbi run` and free their slots, a line each
    (`pbi_assets.run_health`), and give every pool its limit row (`pbi_assets.pools`)."""
    from pbi_assets.definitions import defs

    for line in cleanup_dead_runs(instance):
        print(f"  {line}")
    initialize_pools(instance, pools_of(defs.assets or []))

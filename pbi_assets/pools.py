"""Every pool the definitions use gets its limit row before any run claims a slot in it.

Dagster's executor inserts a pool's limit row on its first claim and, when another process's
INSERT won, updates it in the same transaction, which PostgreSQL has aborted
(`InFailedSqlTransaction`): the losing run dies before any step. `initialize_pools` does that
initialization before runs are launched and takes a lost race for what it is (the row exists).
A limit set with `dagster instance concurrency set POOL N` is left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg


def pools_of(assets: Iterable) -> set[str]:
    """The pools the assets' ops run in (`@asset(pool=...)`)."""
    import dagster as dg

    return {a.op.pool for a in assets if isinstance(a, dg.AssetsDefinition) and a.op.pool}


def initialize_pools(instance: dg.DagsterInstance, pools: Iterable[str], attempts: int = 5) -> list[str]:
    """Give each of `pools` without a limit row the instance's default limit; returns the pools
    this call initialized. Safe against any number of processes doing it at once."""
    storage = instance.event_log_storage
    default = instance.get_concurrency_config().pool_config.default_pool_limit
    if not storage.supports_global_concurrency_limits or default is None:
        return []
    initialized = []
    for pool in sorted(set(pools)):
        for attempt in range(attempts):
            if pool in {p.name for p in storage.get_pool_limits()}:
                break
            try:
                storage.initialize_concurrency_limit_to_default(pool)
                initialized.append(pool)
                break
            except Exception:  # the lost race: the error differs per database driver
                if pool in {p.name for p in storage.get_pool_limits()}:
                    break  # another process initialized it
                if attempt == attempts - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
    return initialized

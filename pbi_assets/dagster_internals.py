"""Every name PBI takes from Dagster's private modules (`dagster._...`), each with the reason: there
is no public equivalent in Dagster 1.13. Nothing else in pbi_assets or pbi_ml imports a private
Dagster module (tests/unit/test_layering.py fails on a new one, and on a change to this list), so an
upgrade of Dagster has one file to check. Import this module lazily, inside functions: it loads
Dagster's internals.
"""

from __future__ import annotations

# `pbi backfill` stores the asset backfill the UI's "Materialize all -> Launch backfill" makes; the
# open-source Python API has no call that launches an asset backfill (only the webserver's GraphQL
# mutation launchPartitionBackfill, whose resolver builds exactly this object)
from dagster._core.definitions.assets.graph.asset_graph_subset import AssetGraphSubset

# a backfill's end: the statuses after which the daemon does no more work on it (no public constant)
from dagster._core.execution.backfill import BULK_ACTION_TERMINAL_STATUSES, PartitionBackfill

# whether the run storage is local SQLite files (so a run's pid is a process on this machine)
from dagster._core.storage.runs.sqlite import SqliteRunStorage

# the run tags Dagster itself puts on a backfill's runs (their values are not public constants)
from dagster._core.storage.tags import BACKFILL_ID_TAG, PARTITION_NAME_TAG

# the ids the UI gives backfills (8 lowercase letters), so ours look like the UI's
from dagster._core.utils import make_new_backfill_id

# what `instance.event_log_storage.get_concurrency_info` returns (pool slots and their holders): a type only
from dagster._utils.concurrency import ConcurrencyKeyInfo

__all__ = [
    "BACKFILL_ID_TAG",
    "BULK_ACTION_TERMINAL_STATUSES",
    "PARTITION_NAME_TAG",
    "AssetGraphSubset",
    "ConcurrencyKeyInfo",
    "PartitionBackfill",
    "SqliteRunStorage",
    "make_new_backfill_id",
]

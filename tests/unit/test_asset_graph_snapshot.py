"""Snapshot of the asset graph's shape, as dagster-open-platform's `test_assets_snapshot` does.

For every asset in `pbi_assets.definitions.defs` it records the key, upstream keys, group, kinds,
pool, tags, op tags, partitions (dimension names and keys, or None) and whether an automation
condition is set, and for every asset check its name, asset, blocking flag and whether it shares
its asset's partitions; it compares that stable JSON with the committed
tests/snapshots/asset_graph.json. A change to the graph then shows up as a reviewable diff of that
file instead of passing unnoticed.

After an intended change, rewrite the snapshot and commit it with the change:

    PBI_UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest -q tests/unit/test_asset_graph_snapshot.py

The partition keys come from the session pbi.yaml that conftest.py writes (sources demo, gen_coco,
gen_bad, gen_lvis, gen_oi, gen_malformed; 2 shards), so the snapshot is the same on every machine.
"""

from __future__ import annotations

import difflib
import json
import os
from pathlib import Path
from typing import Any

import dagster as dg

SNAPSHOT = Path(__file__).parents[1] / "snapshots" / "asset_graph.json"
UPDATE_ENV = "PBI_UPDATE_SNAPSHOTS"


def _partitions(partitions_def: dg.PartitionsDefinition | None) -> dict[str, Any] | None:
    if partitions_def is None:
        return None
    if isinstance(partitions_def, dg.MultiPartitionsDefinition):
        return {
            "type": "multi",
            "dimensions": [
                {"name": dim.name, "keys": list(dim.partitions_def.get_partition_keys())}
                for dim in partitions_def.partitions_defs
            ],
        }
    if isinstance(partitions_def, dg.TimeWindowPartitionsDefinition):  # keys grow with time: record the rule
        return {
            "type": "time_window",
            "cron_schedule": partitions_def.cron_schedule,
            "start": partitions_def.start.isoformat(),
            "timezone": partitions_def.timezone,
        }
    return {"type": type(partitions_def).__name__, "keys": list(partitions_def.get_partition_keys())}


def graph_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    """The asset graph of `defs` as plain, sorted JSON-able data."""
    graph = defs.resolve_asset_graph()
    assets = []
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        assets_def = defs.resolve_assets_def(key)
        spec = assets_def.specs_by_key[key]
        op = assets_def.op if assets_def.is_executable else None
        assets.append(
            {
                "key": key.to_user_string(),
                "deps": sorted(dep.asset_key.to_user_string() for dep in spec.deps),
                "group": spec.group_name,
                "kinds": sorted(spec.kinds),
                "pool": op.pool if op is not None else None,
                "tags": dict(spec.tags),
                "op_tags": dict(op.tags) if op is not None else {},
                "partitions": _partitions(spec.partitions_def),
                "has_automation_condition": spec.automation_condition is not None,
                "checks": sorted(check.name for check in graph.get(key).check_keys),
            }
        )
    checks = []
    for check_key in sorted(graph.asset_check_keys, key=lambda k: (k.asset_key.to_user_string(), k.name)):
        check = graph.get(check_key)
        checks.append(
            {
                "name": check_key.name,
                "asset": check_key.asset_key.to_user_string(),
                "blocking": check.blocking,
                "same_partitions_as_asset": check.partitions_def == graph.get(check_key.asset_key).partitions_def,
            }
        )
    return {"assets": assets, "asset_checks": checks}


def _dump(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def test_asset_graph_matches_snapshot():
    from pbi_assets.definitions import defs

    actual = _dump(graph_snapshot(defs))
    if os.environ.get(UPDATE_ENV) == "1":
        SNAPSHOT.parent.mkdir(parents=True, exist_ok=True)
        SNAPSHOT.write_text(actual)
        return
    assert SNAPSHOT.exists(), f"no snapshot yet: run with {UPDATE_ENV}=1 to write {SNAPSHOT}"
    expected = SNAPSHOT.read_text()
    if actual != expected:
        diff = "".join(
            difflib.unified_diff(
                expected.splitlines(keepends=True),
                actual.splitlines(keepends=True),
                fromfile="tests/snapshots/asset_graph.json (committed)",
                tofile="the asset graph now",
            )
        )
        raise AssertionError(
            f"the asset graph differs from its snapshot; if the change is intended, rerun with "
            f"{UPDATE_ENV}=1 and commit the file:\n{diff}"
        )


def test_stage_assets_describe_their_parameters_as_docs_configuration_md_does():
    # the partitioned stage assets (pbi_assets/assets/stage_asset.py); exports, checkpoint and
    # evaluation describe their parameters in their run config's fields
    from pbi_assets.definitions import defs
    from pbi_ml.config.fields import fields_table
    from pbi_ml.config.reference import STAGE_CONFIGS, configuration_markdown

    docs = configuration_markdown()
    partitioned = [stage for stage in STAGE_CONFIGS if stage not in ("exports", "checkpoint", "evaluation")]
    for stage in partitioned:
        table = fields_table(STAGE_CONFIGS[stage])
        description = defs.resolve_assets_def(stage).specs_by_key[dg.AssetKey(stage)].description or ""
        assert description.endswith(table) and table in docs, stage
    from pbi_assets.assets.training import ExportsRunConfig
    from pbi_ml.config.fields import describe_fields

    seed = {f.name: f for f in describe_fields(STAGE_CONFIGS["exports"])}["seed"]
    assert ExportsRunConfig.model_fields["seed"].description == f"default: 0; {seed.doc}" and seed.doc

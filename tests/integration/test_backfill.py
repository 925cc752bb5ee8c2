"""`pbi backfill --source demo --wait` end to end: a real Dagster asset backfill, run by a real
`dagster-daemon run` that the command starts (none runs), gives the catalog `pbi run` gives.

The daemon launches one run per partition through a code server loaded from workspace.yaml, each
step in its own process (the default multiprocess executor), then the unpartitioned assets; its
backfill loop ticks every 30 s, so this takes minutes (about 4 on 2 cores, besides the session's
`demo_run`), not seconds. "Equal" is rows and bytes with the data root written relative: the two runs
write under different roots, and the tables hold absolute paths."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pbi_assets.partitions import PROJECT
from pbi_ml.catalog import INFO_TABLE, INPUTS_TABLE
from tests.support.cli import pbi_env, run_pbi, start_pbi

REPO = Path(__file__).resolve().parents[2]
# the DuckDB file itself differs between two builds (its rows are compared instead); a finished
# partition's stamp is the size and mtime of its files (timings, compared as the files themselves)
VOLATILE = {"catalog.duckdb", "finished.json"}
ROOT = "<data root>"  # the two data roots differ: paths under them are compared relative to them


def _timing(name: str) -> bool:
    """A measured time or rate (checkpoints.wall_time_s, samples_per_second, built_at, a file's
    mtime_ns in an item record): the only values two runs of the same work may not share."""
    return name in ("built_at", "mtime_ns") or name.endswith(("_s", "_seconds", "per_second"))


def _normalize(table: pa.Table, root: Path) -> pa.Table:
    """Timings dropped; the data root in every string replaced by ROOT."""
    table = table.drop_columns([c for c in table.column_names if _timing(c)])
    for i, name in enumerate(table.column_names):
        if pa.types.is_string(table.schema.field(name).type):
            table = table.set_column(i, name, pc.replace_substring(table.column(name), str(root), ROOT))
    return table


def _tables(root: Path) -> dict[str, pa.Table]:
    """Every Parquet file (the tables, the exports), as a pyarrow table (rows and schema), normalized."""
    return {str(p.relative_to(root)): _normalize(pq.read_table(p), root) for p in sorted(root.rglob("*.parquet"))}


# digests of values that hold absolute paths under the data root (an item's upstream rows, the
# training examples): they differ between two data roots, and the values they digest are compared
ROOT_DIGESTS = {"upstream", "examples_fingerprint"}


def _without_timings(value):
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if not _timing(k) and k not in ROOT_DIGESTS}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


def _files(root: Path) -> dict[str, str]:
    """sha256 of every other file of the data root (images, masks, item ledgers, checkpoints), the
    data root in it replaced by ROOT; a JSON file's timings aside."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix != ".parquet" and path.name not in VOLATILE and ".tmp" not in path.name:
            data = path.read_bytes().replace(str(root).encode(), ROOT.encode())
            if path.suffix == ".json":
                data = json.dumps(_without_timings(json.loads(data)), sort_keys=True).encode()
            elif path.suffix == ".jsonl":  # an item ledger: a record per line
                lines = [json.loads(line) for line in data.splitlines()]
                data = json.dumps(_without_timings(lines), sort_keys=True).encode()
            elif path.suffix == ".safetensors":  # its JSON header's key order varies from process to process
                size = struct.unpack("<Q", data[:8])[0]
                header = json.dumps(json.loads(data[8 : 8 + size]), sort_keys=True).encode()
                data = header + data[8 + size :]
            out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


def _catalog_rows(root: Path) -> dict[str, list]:
    con = duckdb.connect(str(root / "catalog.duckdb"), read_only=True)
    try:
        names = [r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()]
        return {
            name: sorted(map(repr, _normalize(con.table(name).to_arrow_table(), root).to_pylist()))
            for name in sorted(names)
            # row counts as of each build (the backfill's automation rebuilds it later); the digest of
            # the input files' paths and mtimes
            if name not in (INFO_TABLE, INPUTS_TABLE)
        }
    finally:
        con.close()


def test_backfill_wait_gives_the_catalog_of_pbi_run(demo_run, tmp_path):
    reference, *_ = demo_run  # every asset on the demo, in process (what `pbi run` materializes)
    data, home = tmp_path / "data", tmp_path / "dagster_home"
    env = pbi_env(data, home)
    proc = run_pbi("backfill", "--source", "demo", "--wait", env=env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert "no Dagster daemon was running: started `dagster-daemon run`" in out, out
    assert f"partitions {PROJECT.num_shards}/{PROJECT.num_shards} done, 0 failed, 0 running" in out, out
    assert "downstream 4/4 done, 0 failed" in out and "completed_success" in out, out
    assert "stopping the daemon this command started" in out, out

    # rows and bytes: every table, every file, every catalog table and view
    expected, got = _tables(reference), _tables(data)
    assert sorted(got) == sorted(expected)
    for name, table in expected.items():
        assert got[name].equals(table), name
    assert _files(data) == _files(reference)
    assert _catalog_rows(data) == _catalog_rows(reference)

    import dagster as dg

    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = instance.get_runs()
        backfills = instance.get_backfills()
    assert len(backfills) == 1 and backfills[0].status.value == "COMPLETED_SUCCESS"
    assert all(r.is_finished for r in runs)
    assert {r.tags.get("dagster/partition") for r in runs if r.tags.get("dagster/backfill")} >= {
        f"{shard}|demo" for shard in PROJECT.shard_keys
    }

    # the daemon it started is gone (its whole process group), and the next `pbi backfill` does not
    # take its last heartbeats (Dagster leaves them behind) for a daemon that runs
    daemon_pid = int(re.search(r"started `dagster-daemon run` for this backfill \(pid (\d+)", out).group(1))
    with pytest.raises(ProcessLookupError):
        os.killpg(daemon_pid, 0)
    again = run_pbi("backfill", "--source", "demo", "--assets", "key:catalog", env=env, timeout=300)
    assert again.returncode == 0 and "no Dagster daemon is running" in again.stdout, again.stdout + again.stderr


def test_backfill_rejects_an_unknown_source_and_selection(tmp_path, capsys, monkeypatch):
    from pbi_assets.cli import main

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    assert main(["backfill", "--source", "nope"]) == 2
    assert "unknown source 'nope'" in capsys.readouterr().err
    assert main(["backfill", "--source", "demo", "--assets", "key:no_such_asset"]) == 2
    err = capsys.readouterr().err
    assert "--assets 'key:no_such_asset'" in err, err


@pytest.mark.parametrize("selection", ["key:pairs+", "key:catalog"])
def test_backfill_without_wait_stores_a_backfill_the_daemon_picks_up(tmp_path, capsys, monkeypatch, selection):
    """Without --wait nothing runs here: the backfill is stored, and the command says a daemon is needed."""
    import dagster as dg

    from pbi_assets.cli import main

    home = tmp_path / "dagster_home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    assert main(["backfill", "--source", "demo", "--assets", selection]) == 0
    out = capsys.readouterr().out
    assert "no Dagster daemon is running" in out, out
    with dg.DagsterInstance.from_config(str(home)) as instance:
        (backfill,) = instance.get_backfills()
        assert instance.get_runs() == []
    from pbi_assets.definitions import defs

    data = backfill.get_asset_backfill_data(defs.resolve_asset_graph())
    targeted = {k.to_user_string() for k in data.target_subset.asset_keys}
    if selection == "key:pairs+":
        downstream = {
            "artifact_audit",
            "descriptions",
            "instructions",
            "pair_judgments",
            "splits",
            "catalog",
            "exports",
        }
        downstream |= {"checkpoint", "evaluation"}
        assert targeted == {"pairs", *downstream}
        assert sorted(data.target_subset.get_partitions_subset(dg.AssetKey("pairs")).get_partition_keys()) == [
            f"{shard}|demo" for shard in PROJECT.shard_keys
        ]
    else:
        assert targeted == {"catalog"}
    assert backfill.tags["pbi/source"] == "demo"


def test_backfill_wait_starts_a_daemon_only_for_a_local_instance(tmp_path, monkeypatch):
    """The rule: a daemon of its own only outside a cluster and for Dagster's DefaultRunLauncher
    (runs are processes here); a deployment's instance is left to the deployment's daemon."""
    import dagster as dg

    from pbi_assets.cli.instance import starts_own_daemon

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.delenv("PBI_EXECUTOR", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes((REPO / "pbi_assets" / "dagster.yaml").read_bytes())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert starts_own_daemon(instance)
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
        assert not starts_own_daemon(instance)
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
        monkeypatch.setenv("PBI_EXECUTOR", "k8s")
        assert not starts_own_daemon(instance)
    monkeypatch.delenv("PBI_EXECUTOR")
    launcher = {"module": "dagster._core.test_utils", "class": "MockedRunLauncher"}  # not runs on this machine
    with dg.instance_for_test(overrides={"run_launcher": launcher}) as instance:
        assert not starts_own_daemon(instance)


def test_backfill_wait_in_a_pod_follows_the_deployments_daemon_and_starts_none(tmp_path):
    """`pbi backfill --wait` in a pod with the instance mounted: no `dagster-daemon` of its own; it
    says the deployment's daemon runs the backfill (none heartbeats here) and keeps following."""
    import signal

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_bytes((REPO / "pbi_assets" / "dagster.yaml").read_bytes())
    process = start_pbi(
        *("backfill", "--source", "demo", "--assets", "key:catalog", "--wait"),
        env=pbi_env(tmp_path / "data", home, KUBERNETES_SERVICE_HOST="10.96.0.1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines = []
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if "no Dagster daemon heartbeats" in line:
                break
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    out = "".join(lines)
    assert "the deployment's Dagster daemon runs it" in out and "no Dagster daemon heartbeats" in out, out
    assert "started `dagster-daemon run`" not in out and not (home / "pbi-daemon").exists(), out

"""The catalog: the stored `pairs` table equals the live join; a new partition is live at once and
stored after the next build; the catalog asset is rebuilt by its automation condition."""

from __future__ import annotations

import os
import time

import dagster as dg
import duckdb
import pytest

from pbi_ml import tables
from pbi_ml.catalog import (
    FILES_DIR,
    INFO_TABLE,
    MATERIALIZED,
    build_catalog,
    built_at,
    live_name,
    read_view,
    stale_files,
    stored_name,
)
from pbi_ml.storage import Storage, safe_name, safe_name_sql, table_from_records
from tests.support.pipeline_helpers import materialize_unpartitioned, metadata_of

LIVE_PAIRS = live_name(tables.PAIRS.name)
LIVE_PAIRS_STORED_COLUMNS = f'(SELECT * EXCLUDE (output_digest) FROM "{LIVE_PAIRS}")'


PAIR_FILE_COLUMNS = ("source_image", "target_image", "mask", "edit_mask")


def _file(storage: Storage, shard: str, pair_id: str, column: str, stage_layout: bool) -> str:
    """An (empty) file where the pairs stage writes the pair's image (`stage_layout`), or in a
    folder of another layout: the catalog stores that folder."""
    source = pair_id.split("/")[0]
    folder = (
        storage.file_dir(tables.PAIRS, source, shard, pair_id)
        if stage_layout
        else storage.root / "files" / tables.PAIRS.name / pair_id.replace("/", "_")
    )
    path = folder / f"{column}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return str(path)


def _write_partition(
    storage: Storage, source: str, shard: str, n: int, failed: int = 1, stage_layout: bool = True
) -> list[str]:
    """n pairs (the first `failed` of them failed: no description, instruction or split row
    content), with their descriptions, instructions, judgments, splits and audit rows; returns the pair ids."""
    pairs, described, instructed, judged, split, audited = [], [], [], [], [], []
    for i in range(n):
        ok = i >= failed
        pair_id = f"{source}/img{shard}{i:03d}/{i}"
        base = {"pair_id": pair_id, "source": source, "shard": shard, "annotation_id": str(i), "category": "dog"}
        pairs.append(
            {
                **base,
                "image_id": f"img{shard}{i:03d}",
                "category_synonyms": ["dog"],
                "width": 64,
                "height": 48,
                "area_fraction": 0.01 * (i + 1),
                "object_location": "top left" if i % 2 else "center",
                **{
                    column: _file(storage, shard, pair_id, column, stage_layout) if ok else None
                    for column in PAIR_FILE_COLUMNS
                },
                "stats_change": 0.5,
                "status": "ok" if ok else "failed",
                "error": None if ok else "removal_size_mismatch",
            }
        )
        described.append(
            {**base, "description": f"a brown dog {i}" if ok else None, "status": "ok" if ok else "failed"}
        )
        instructed.append(
            {
                **base,
                "instruction_class": "add a dog" if ok else None,
                "instruction_vlm_llm": f"put a brown dog {i} in the picture" if ok else None,
                "instruction_check": "passed" if ok else None,
                "status": "ok" if ok else "failed",
            }
        )
        judged.append(
            {**base, "judge_score": 1.0 + i % 5 if ok else None, "judge_reason": f"reason {i}", "status": "ok"}
        )
        if ok:
            split.append({**base, "split": "test" if i % 3 == 0 else "train", "split_rule": "hash"})
            audited.append({**base, "detectability": 0.1 * i, "target_probability": 0.5, "audit_backend": "stats"})
    for table, rows in (
        (tables.PAIRS, pairs),
        (tables.DESCRIPTIONS, described),
        (tables.INSTRUCTIONS, instructed),
        (tables.PAIR_JUDGMENTS, judged),
        (tables.SPLITS, split),
        (tables.ARTIFACT_AUDIT, audited),
    ):
        storage.write_table(table, source, shard, table_from_records(rows, table.schema))
    return [row["pair_id"] for row in pairs]


def _rows(con, name: str) -> list[tuple]:
    relation = name if name.startswith("(") else f'"{name}"'
    return con.execute(f"SELECT * FROM {relation} ORDER BY pair_id").fetchall()


def _is_file(value) -> bool:
    return isinstance(value, str) and value.endswith(".png")


def test_safe_name_in_sql_is_safe_name():
    """The catalog predicts a pair's folder in SQL: `safe_name_sql` must give `safe_name`'s result."""
    ids = [
        "coco/000000123/456",
        "../../etc/passwd",
        "._hidden_.",
        "..",
        "",
        "a b\tc",
        "caf\u00e9/\u732b/\U0001f436",
        "x" * 200,
        "-._-",
        "ok.name-1_2",
    ]
    con = duckdb.connect()
    try:
        got = [con.execute(f"SELECT {safe_name_sql('$v')}", {"v": value}).fetchone()[0] for value in ids]
    finally:
        con.close()
    assert got == [safe_name(value) for value in ids]


def test_stored_pairs_equal_the_live_join(tmp_path):
    storage = Storage(tmp_path)
    ids = _write_partition(storage, "gen", "000", 5) + _write_partition(storage, "gen", "001", 4)
    _write_partition(storage, "other", "000", 3, failed=0, stage_layout=False)
    counts = build_catalog(storage)
    assert counts[tables.PAIRS.name] == 12
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    try:
        kinds = dict(con.execute("SELECT table_name, table_type FROM information_schema.tables").fetchall())
        assert kinds[stored_name(tables.PAIRS.name)] == "BASE TABLE"
        assert kinds[tables.PAIRS.name] == kinds[LIVE_PAIRS] == "VIEW"
        # the stored table keeps each file's name, and the pair's folder (relative to the data root)
        # only when it is not the folder the pairs stage writes to
        stored_files = con.execute(
            f'SELECT source, {FILES_DIR}, {", ".join(PAIR_FILE_COLUMNS)} FROM "{stored_name(tables.PAIRS.name)}" '
            "WHERE status = 'ok' ORDER BY pair_id"
        ).fetchall()
        names = tuple(f"{c}.png" for c in PAIR_FILE_COLUMNS)
        assert stored_files[0] == ("gen", None, *names)
        assert stored_files[-1] == ("other", "files/pairs/other_img000002_2", *names)
        assert {row[:2] for row in stored_files} == {("gen", None)} | {
            ("other", f"files/pairs/other_img000{i:03d}_{i}") for i in range(3)
        }
        for table in tables.ALL_TABLES:  # every per-stage name other than the joined pairs stays a live view
            if table.name not in MATERIALIZED:
                assert kinds[table.name] == "VIEW", table.name
        # the same rows as the live join, less the digests it leaves to the live view
        live_only = ", ".join(MATERIALIZED[tables.PAIRS.name].live_only)
        assert live_only == "output_digest"
        stored = _rows(con, tables.PAIRS.name)
        assert stored == _rows(con, LIVE_PAIRS_STORED_COLUMNS)
        assert len(stored) == 12 and {r[0] for r in stored} >= set(ids)
        assert all(os.path.isabs(path) and os.path.exists(path) for row in stored for path in row if _is_file(path))
        columns = [r[0] for r in con.execute(f'DESCRIBE "{tables.PAIRS.name}"').fetchall()]
        live_columns = [r[0] for r in con.execute(f'DESCRIBE "{LIVE_PAIRS}"').fetchall()]
        assert columns == [c for c in live_columns if c != "output_digest"]
        assert {"description", "instruction_vlm_llm", "judge_score", "judge_reason", "split", "detectability"} <= set(
            columns
        )
        judge_of = dict(con.execute(f"SELECT pair_id, judge_score FROM {tables.PAIRS.name}").fetchall())
        assert judge_of["gen/img000000/0"] is None and judge_of["gen/img000001/1"] == 2.0
        # the failed pair has no split, no description; an ok one has all of them
        split_of = dict(con.execute(f"SELECT pair_id, split FROM {tables.PAIRS.name}").fetchall())
        assert split_of["gen/img000000/0"] is None and split_of["gen/img000001/1"] == "train"
        detectability = dict(con.execute(f"SELECT pair_id, detectability FROM {tables.PAIRS.name}").fetchall())
        assert detectability["gen/img000000/0"] is None and detectability["gen/img000002/2"] == 0.2
        info = {r[0]: r[1:] for r in con.execute(f"SELECT name, kind, rows FROM {INFO_TABLE}").fetchall()}
        assert info[tables.PAIRS.name] == ("table", 12) and info[LIVE_PAIRS][0] == "view"
        assert info[tables.SPLITS.name] == ("view", 4 + 3 + 3)
    finally:
        con.close()
    # read_view (what the stages use) computes the same join from the Parquet
    from_parquet = read_view(storage, tables.PAIRS.name).sort_by("pair_id").drop_columns(["output_digest"])
    assert [tuple(r.values()) for r in from_parquet.to_pylist()] == stored
    # no temp file or WAL left beside the catalog
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.duckdb", "files", "tables"]


def test_baseline_build_keeps_every_name_a_view(tmp_path):
    storage = Storage(tmp_path)
    _write_partition(storage, "gen", "000", 3)
    path = tmp_path / "views.duckdb"
    build_catalog(storage, path=path, materialize=())
    con = duckdb.connect(str(path), read_only=True)
    try:
        types = {r[0] for r in con.execute("SELECT table_type FROM information_schema.tables").fetchall()}
        assert con.execute(f"SELECT count(*) FROM {tables.PAIRS.name}").fetchone() == (3,)
    finally:
        con.close()
    assert types == {"VIEW", "BASE TABLE"}  # the views, and the catalog_info table
    with pytest.raises(ValueError, match="not a catalog name"):
        build_catalog(storage, path=path, materialize=("no_such_view",))


def test_new_partition_is_live_at_once_and_stored_after_the_next_build(tmp_path):
    storage = Storage(tmp_path)
    _write_partition(storage, "gen", "000", 4)
    assert stale_files(storage), "no catalog yet: every file is newer than it"
    build_catalog(storage)
    assert stale_files(storage) == []
    first = built_at(storage)
    assert first is not None
    time.sleep(0.05)  # a file time after the build time, even on coarse clocks
    new_ids = _write_partition(storage, "gen", "001", 3)
    for table in MATERIALIZED[tables.PAIRS.name].inputs:  # written after the build (coarse file clocks)
        path = storage.table_path(table, "gen", "001")
        if path.stat().st_mtime <= first.timestamp():
            os.utime(path, (first.timestamp() + 0.01, first.timestamp() + 0.01))

    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    try:  # the live views see the new partition at once; the stored table still is the old build
        assert con.execute(f"SELECT count(*) FROM {LIVE_PAIRS}").fetchone() == (7,)
        assert con.execute(f"SELECT count(*) FROM {tables.SPLITS.name}").fetchone() == (3 + 2,)
        assert con.execute(f"SELECT count(*) FROM {tables.PAIRS.name}").fetchone() == (4,)
    finally:
        con.close()
    assert read_view(storage, tables.PAIRS.name).num_rows == 7  # the stages never wait for the catalog
    stale = stale_files(storage)
    assert {p.parent.parent.name for p in stale} == {t.name for t in MATERIALIZED[tables.PAIRS.name].inputs}
    assert {p.name for p in stale} == {"001.parquet"}

    build_catalog(storage)
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    try:
        assert _rows(con, tables.PAIRS.name) == _rows(con, LIVE_PAIRS_STORED_COLUMNS)
        stored = {r[0] for r in con.execute(f"SELECT pair_id FROM {tables.PAIRS.name}").fetchall()}
    finally:
        con.close()
    assert set(new_ids) <= stored and len(stored) == 7
    assert stale_files(storage) == []


def test_an_unchanged_catalog_is_kept_and_any_input_change_rebuilds_it(tmp_path):
    """A build from the same inputs keeps the catalog file as it is (a no-op re-run costs a
    listing, not a rebuild); a new or removed partition of an input stage, `force`, or a moved
    data root rebuild it."""
    import shutil

    storage = Storage(tmp_path / "a")
    _write_partition(storage, "gen", "000", 4)
    path = storage.catalog_path

    def identity():
        st = path.stat()
        return st.st_ino, st.st_mtime_ns

    counts = build_catalog(storage)
    first = identity()
    assert build_catalog(storage) == counts and identity() == first, "kept as it is"
    build_catalog(storage, force=True)
    assert identity() != first
    _write_partition(storage, "gen", "001", 3)
    forced = identity()
    assert build_catalog(storage)[tables.PAIRS.name] == 7 and identity() != forced
    for table in MATERIALIZED[tables.PAIRS.name].inputs:
        storage.table_path(table, "gen", "001").unlink(missing_ok=True)
    assert build_catalog(storage)[tables.PAIRS.name] == 4

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    moved = Storage(tmp_path / "b")
    assert build_catalog(moved)[tables.PAIRS.name] == 4
    before, after = built_at(storage), built_at(moved)
    assert before is not None and after is not None and after > before, "rebuilt: its views name the new root"


def test_readers_keep_their_catalog_while_it_is_rebuilt(tmp_path):
    """A reader holding the catalog open is not blocked by a rebuild and sees a whole catalog."""
    storage = Storage(tmp_path)
    _write_partition(storage, "gen", "000", 4)
    build_catalog(storage)
    reader = duckdb.connect(str(storage.catalog_path), read_only=True)
    try:
        _write_partition(storage, "gen", "001", 3)
        build_catalog(storage)  # no lock taken against the open reader
        assert reader.execute(f"SELECT count(*) FROM {tables.PAIRS.name}").fetchone() == (4,)
    finally:
        reader.close()
    again = duckdb.connect(str(storage.catalog_path), read_only=True)
    try:
        assert again.execute(f"SELECT count(*) FROM {tables.PAIRS.name}").fetchone() == (7,)
    finally:
        again.close()


def test_catalog_asset_materializes_the_stored_tables(tmp_path):
    storage = Storage(tmp_path)
    _write_partition(storage, "gen", "000", 4)
    from pbi_assets.definitions import UNPARTITIONED_ASSETS

    catalog = [a for a in UNPARTITIONED_ASSETS if a.key.to_user_string() == "catalog"]
    result = materialize_unpartitioned(tmp_path, selection=catalog)
    assert result.success
    assert all(e.passed for e in result.get_asset_check_evaluations())
    meta = metadata_of(result, "catalog")
    assert meta[f"rows_{tables.PAIRS.name}"] == 4
    assert meta["stored_tables"] == tables.PAIRS.name


def test_catalog_carries_its_automation_condition_and_sensor():
    from pbi_assets.assets.catalog import CATALOG_AUTOMATION_CONDITION, catalog
    from pbi_assets.automation import catalog_automation_sensor
    from pbi_assets.definitions import defs

    spec = catalog.specs_by_key[catalog.key]
    assert spec.automation_condition == CATALOG_AUTOMATION_CONDITION
    assert {dep.asset_key.to_user_string() for dep in spec.deps} == {
        t.name for t in MATERIALIZED[tables.PAIRS.name].inputs
    }
    assert catalog_automation_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    assert catalog_automation_sensor.asset_selection.resolve(graph) == {catalog.key}
    # whichever automation condition sensor the code location registers, one of them covers the catalog
    sensors = [
        s
        for s in defs.get_repository_def().sensor_defs
        if isinstance(s, dg.AutomationConditionSensorDefinition) and catalog.key in s.asset_selection.resolve(graph)
    ]
    assert sensors, "no automation condition sensor evaluates the catalog"


def test_automation_condition_requests_a_rebuild_when_a_partition_changes():
    from pbi_assets.assets.catalog import catalog
    from pbi_assets.definitions import defs
    from pbi_assets.partitions import PROJECT

    instance = dg.DagsterInstance.ephemeral()
    selection = dg.AssetSelection.assets(catalog)
    cursor = None

    def tick() -> bool:
        nonlocal cursor
        result = dg.evaluate_automation_conditions(
            defs=defs, instance=instance, asset_selection=selection, cursor=cursor
        )
        cursor = result.cursor
        return result.get_num_requested(catalog.key) == 1

    assert tick(), "never built: the first evaluation requests it"
    assert not tick(), "nothing changed since"
    source, shard = PROJECT.source_names[0], PROJECT.shard_keys[-1]
    key = dg.MultiPartitionKey({"source": source, "shard": shard})
    for asset in (tables.SPLITS.name, tables.DESCRIPTIONS.name):
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=asset, partition=key))
        assert tick(), f"a new {asset} partition requests a rebuild"
        assert not tick(), "once"
    # a catalog materialization alone (e.g. by `pbi run`) requests nothing more
    instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=catalog.key))
    assert not tick()

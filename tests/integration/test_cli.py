"""`pbi run` goes through a persistent Dagster instance (runs show in the UI); `pbi sql` reads."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.support.cli import pbi_env, run_pbi


def _pbi(tmp_path, *args) -> subprocess.CompletedProcess:
    config = tmp_path / "pbi.yaml"
    if not config.exists():
        config.write_text("{}\n")  # nothing declared: the demo source only
    return run_pbi(*args, env=pbi_env(tmp_path / "data", tmp_path / "home", PBI_CONFIG=str(config)), timeout=900)


def test_pbi_run_records_runs_in_the_instance_and_sql_reads_the_catalog(tmp_path, monkeypatch):
    done = _pbi(tmp_path, "run", "--source", "demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "demo|000: ok" in done.stdout and "pairs" in done.stdout
    assert (tmp_path / "home" / "dagster.yaml").exists(), "DAGSTER_HOME is created from the template"

    import dagster as dg

    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    with dg.DagsterInstance.get() as instance:
        runs = instance.get_runs()
        assert len(runs) == 5  # one run per shard (4 by default), then the unpartitioned assets
        assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
        assert any(r.tags.get("dagster/partition") for r in runs)

    out = _pbi(tmp_path, "sql", "SELECT count(*) AS n FROM candidates WHERE source = 'demo'")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.split()[-1]) > 0

    bad = _pbi(tmp_path, "run", "--source", "nope")
    assert bad.returncode != 0 and "unknown source 'nope'" in (bad.stdout + bad.stderr)

    # a bit flipped on disk, size and mtime kept: only `pbi verify` sees it, and invalidates its item
    png = sorted((tmp_path / "data" / "files" / "pairs").rglob("*.png"))[0]
    st, data = png.stat(), bytearray(png.read_bytes())
    data[len(data) // 2] ^= 0xFF
    png.write_bytes(bytes(data))
    os.utime(png, ns=(st.st_atime_ns, st.st_mtime_ns))
    found = _pbi(tmp_path, "verify", "--source", "demo")
    assert found.returncode == 1, found.stdout + found.stderr
    assert f"corrupt: {png.relative_to(tmp_path / 'data')} (pairs " in found.stdout and "1 bad files" in found.stdout
    clean = _pbi(tmp_path, "verify", "--source", "demo", "--stage", "pairs")
    assert clean.returncode == 0 and "every finished item is intact" in clean.stdout, clean.stdout + clean.stderr


# ---- empty is not failure: a source whose every instance is rejected ends green, saying why


def test_pbi_run_without_train_pairs_ends_green_and_says_why_nothing_was_trained(tmp_path):
    import json

    import yaml

    from tests.support.source_fixtures import make_coco_source

    source = make_coco_source(tmp_path / "crowds", name="all_crowd", n_images=2)
    annotations = Path(source.annotation_files[0])
    data = json.loads(annotations.read_text())
    for annotation in data["annotations"]:
        annotation["iscrowd"] = 1  # every instance a crowd region: the candidates stage rejects them all
    annotations.write_text(json.dumps(data))
    entry = {"name": source.name, "format": "coco", "images": source.images, "annotations": str(annotations)}
    (tmp_path / "pbi.yaml").write_text(yaml.safe_dump({"num_shards": 1, "sources": [entry]}))

    done = _pbi(tmp_path, "run", "--source", "all_crowd")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all_crowd|000: ok" in done.stdout
    assert "checkpoint: skipped: no train pairs" in done.stdout
    assert "evaluation: skipped: no checkpoint" in done.stdout
    assert "nothing was trained: no train pairs" in done.stdout.splitlines()[-1]
    assert "FAILED" not in done.stdout and "Traceback" not in done.stderr

    out = _pbi(tmp_path, "sql", "SELECT DISTINCT reject_reason FROM candidates WHERE source = 'all_crowd'")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[1:] == ["crowd"]


# ---- pbi check: the config and the sources' files, in seconds, before a long run


def _pbi_session(tmp_path, *args) -> subprocess.CompletedProcess:
    """`pbi` on the session pbi.yaml (tests/conftest.py: gen_coco, gen_bad, gen_malformed, ...)."""
    return run_pbi(*args, env=pbi_env(tmp_path / "data", tmp_path / "home"), timeout=300)


def test_pbi_check_counts_the_demo_source(tmp_path):
    from pbi_ml.config import demo_source
    from pbi_ml.sources import read_source_index

    index = read_source_index(demo_source(), 4)
    images, categories = len(set(index.column("image_id").to_pylist())), len(set(index.column("category").to_pylist()))
    done = _pbi(tmp_path, "check", "--source", "demo")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (
        f"source demo (coco): ok: {images} images, {index.num_rows} instances, {categories} categories; "
        f"{images} sampled images checked"
    ) in done.stdout
    assert done.stdout.splitlines()[-1] == "1 source(s): 1 ok, 0 with warnings, 0 fatal"
    assert not (tmp_path / "data").exists(), "pbi check writes nothing"


def test_pbi_check_reports_broken_sources_with_reason_codes(tmp_path):
    done = _pbi_session(tmp_path, "check", "--source", "gen_bad")
    assert done.returncode == 0, done.stdout + done.stderr  # bad instances and images are not fatal
    out = done.stdout
    assert "source gen_bad (coco): warnings:" in out
    assert "index errors: degenerate_polygon 1, empty_segmentation 1, zero_area 1" in out
    assert "image problems in the sample of" in out
    for code in ("image_missing", "image_unreadable", "path_escapes_root", "degenerate_polygon"):
        assert f"  {code}: " in out, code

    everything = _pbi_session(tmp_path, "check", "--sample", "3")
    assert everything.returncode == 1, everything.stdout + everything.stderr  # gen_malformed is fatal
    assert "source gen_malformed (coco): FATAL" in everything.stdout
    assert "source gen_coco (coco): ok:" in everything.stdout and "3 sampled images checked" in everything.stdout
    assert "1 fatal" in everything.stdout.splitlines()[-1]


def test_check_source_fatal_problems_sample_and_read_only_parse(tmp_path):
    from pbi_ml.check import ANNOTATION_FILE_ERROR, IMAGES_FOLDER_MISSING, check_source
    from pbi_ml.config import SourceConfig
    from pbi_ml.sources.index import ensure_source_index, index_path
    from pbi_ml.storage import Storage
    from tests.support.source_fixtures import make_coco_source, make_openimages_source

    coco = make_coco_source(tmp_path / "coco", name="c", n_images=8)
    data_root = tmp_path / "data"
    report = check_source(coco, 2, sample=3, seed=1, data_root=str(data_root))
    assert report.status == "ok" and report.sampled == 3 and not report.index_from_cache
    assert not data_root.exists(), "a read-only parse: no cached index written"
    again = check_source(coco, 2, sample=3, seed=1, data_root=str(data_root))
    assert (again.images, again.instances, again.sampled) == (report.images, report.instances, 3)

    ensure_source_index(coco, 2, Storage(data_root))  # what the graph's source_index step builds
    cached = check_source(coco, 2, sample=3, data_root=str(data_root))
    assert cached.index_from_cache and cached.instances == report.instances
    assert index_path(coco, 2, Storage(data_root)).is_file()

    # a current index is all the check reads: an annotation file garbled in place (same size and
    # mtime, what the index is keyed on) goes unseen; once its mtime changes, the full parse runs
    annotations = Path(coco.annotation_files[0])
    stat, original = annotations.stat(), annotations.read_bytes()
    annotations.write_bytes(b"x" * stat.st_size)
    os.utime(annotations, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    unparsed = check_source(coco, 2, sample=3, data_root=str(data_root))
    assert unparsed.index_from_cache and unparsed.status == "ok" and unparsed.instances == report.instances
    os.utime(annotations, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    parsed = check_source(coco, 2, sample=3, data_root=str(data_root))
    assert not parsed.index_from_cache and parsed.fatal
    assert parsed.problems[0].code == ANNOTATION_FILE_ERROR
    annotations.write_bytes(original)

    gone = SourceConfig(name="g", format="coco", images=str(tmp_path / "nowhere"), annotations=coco.annotations)
    missing = check_source(gone, 2)
    assert missing.fatal and missing.problems[0].code == IMAGES_FOLDER_MISSING
    assert str(tmp_path / "nowhere") in missing.problems[0].detail
    assert missing.instances == report.instances  # the annotations still parse and are counted

    no_file = SourceConfig(name="n", format="coco", images=coco.images, annotations=str(tmp_path / "none.json"))
    assert [p.code for p in check_source(no_file, 2).problems] == ["annotation_file_error"]

    oi = check_source(make_openimages_source(tmp_path / "oi", name="oi", corrupt=True), 2)
    assert not oi.fatal and {"mask_missing", "mask_unreadable"} <= set(oi.index_errors)


def test_check_validates_the_stage_sections_of_the_config(tmp_path):
    from pbi_ml.check import check_stages
    from pbi_ml.config import ProjectConfig

    project = ProjectConfig(
        data_root=str(tmp_path),
        stages={"removals": {"batch_size": -1}, "candidates": {"min_area_fracton": 0.1}, "removal": {}},
    )
    problems = {p.detail.split(":")[0]: p for p in check_stages(project)}
    assert problems["stages.removals"].fatal and "RemovalConfig.batch_size" in problems["stages.removals"].detail
    assert problems["stages.candidates"].fatal and "min_area_fracton" in problems["stages.candidates"].detail
    assert not problems["stages.removal"].fatal  # no such stage: the graph ignores it, a warning
    assert check_stages(ProjectConfig(data_root=str(tmp_path), stages={"checkpoint": {"recipe": "smoke"}})) == []


def test_check_knows_every_stage_that_takes_config():
    import dagster as dg

    from pbi_assets.definitions import defs
    from pbi_ml.check import _stage_builders

    configured = {
        a.key.to_user_string()
        for a in defs.assets or []
        if isinstance(a, dg.AssetsDefinition) and a.op.config_schema.as_field().config_type.kind.name == "STRICT_SHAPE"
    }
    assert configured == set(_stage_builders())

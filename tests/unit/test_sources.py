"""Source readers (COCO, LVIS, Open Images), the index cache and mask decoding, on generated data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from PIL import Image

from pbi_ml.config import SourceConfig
from pbi_ml.errors import AnnotationFileError, ItemError
from pbi_ml.sources import INDEX_SCHEMA, decode_mask, load_source_index, read_source_index, shard_index, shard_of
from pbi_ml.sources import index as index_module
from pbi_ml.storage import Storage
from tests.support.source_fixtures import make_coco_source, make_lvis_source, make_openimages_source

ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = Path("/work/shared/data")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {
        "coco": make_coco_source(root / "coco", name="gen_coco"),
        "bad": make_coco_source(root / "bad", name="gen_bad", corrupt=True),
        "lvis": make_lvis_source(root / "lvis", name="gen_lvis"),
        "oi": make_openimages_source(root / "oi", name="gen_oi"),
        "oi_bad": make_openimages_source(root / "oi_bad", name="gen_oi_bad", corrupt=True),
    }


def rows_by_id(table: pa.Table) -> dict[str, dict]:
    return {r["annotation_id"]: r for r in table.to_pylist()}


def write_coco(path: Path, images, annotations, categories=({"id": 1, "name": "thing"},)) -> SourceConfig:
    path.write_text(
        json.dumps({"images": list(images), "annotations": list(annotations), "categories": list(categories)})
    )
    return SourceConfig(name="t", format="coco", images=str(path.parent), annotations=str(path))


# --------------------------------------------------------------------------------------------
# COCO


def test_coco_index_schema_order_and_content(datasets):
    source = datasets["coco"]
    table = read_source_index(source, num_shards=3)
    assert table.schema == INDEX_SCHEMA
    assert table.num_rows == 16
    rows = table.to_pylist()
    for row in rows:
        assert row["shard"] == f"{shard_of(row['image_id'], 3):03d}"
        assert row["source"] == "gen_coco" and row["index_error"] is None and row["area"] > 0
        assert row["category_synonyms"] == [row["category"]] and row["category_frequency"] is None
    # sorted by shard, then image id and annotation id numerically
    keys = [(r["shard"], int(r["image_id"]), int(r["annotation_id"])) for r in rows]
    assert keys == sorted(keys)

    by_category = {}
    for row in rows:
        by_category.setdefault(row["category"], []).append(row)
    cup = json.loads(by_category["cup"][0]["segmentation"])
    assert isinstance(cup, list) and len(cup) == 2  # multi-polygon instance kept whole
    for name in ("spoon", "badge", "flag"):  # compressed, uncompressed, crowd uncompressed -> compressed
        rle = json.loads(by_category[name][0]["segmentation"])
        assert set(rle) == {"size", "counts"} and isinstance(rle["counts"], str)
        assert rle["size"] == [by_category[name][0]["height"], by_category[name][0]["width"]]
    assert [r["category"] for r in rows if r["iscrowd"]] == ["flag"]


def test_coco_areas_bboxes_and_masks_match_pycocotools(datasets):
    from pycocotools.coco import COCO

    source = datasets["coco"]
    rows = rows_by_id(read_source_index(source, num_shards=2))
    coco = COCO(source.annotation_files[0])
    assert len(rows) == len(coco.anns)
    for ann_id, ann in coco.anns.items():
        row = rows[str(ann_id)]
        expected = coco.annToMask(ann).astype(bool)
        assert row["area"] == expected.sum()
        ys, xs = np.nonzero(expected)
        assert (row["bbox_x"], row["bbox_y"]) == (xs.min(), ys.min())
        assert (row["bbox_w"], row["bbox_h"]) == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
        np.testing.assert_array_equal(decode_mask(row, source), expected)


def test_shards_are_stable_across_processes(datasets):
    source = datasets["coco"]
    here = [(r["annotation_id"], r["shard"]) for r in read_source_index(source, 4).to_pylist()]
    code = (
        "import json, sys\n"
        "from pbi_ml.config import SourceConfig\n"
        "from pbi_ml.sources import read_source_index\n"
        f"s = SourceConfig(name='gen_coco', format='coco', images={source.images!r}, annotations={source.annotation_files[0]!r})\n"
        "t = read_source_index(s, 4)\n"
        "print(json.dumps(list(zip(t.column('annotation_id').to_pylist(), t.column('shard').to_pylist()))))\n"
    )
    for seed in ("1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
        )
        assert [tuple(x) for x in json.loads(out.stdout)] == here
    assert len({shard for _, shard in here}) > 1  # 16 instances on 6 images do spread over shards


def test_numeric_ids_sort_numerically_and_string_ids_lexically(tmp_path):
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 20, "height": 20} for i in (10, 2, 1)]
    anns = [
        {"id": a, "image_id": i, "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]}
        for a, i in ((30, 10), (4, 2), (100, 2), (9, 1))
    ]
    table = read_source_index(write_coco(tmp_path / "a.json", images, anns), num_shards=1)
    assert table.column("image_id").to_pylist() == ["1", "2", "2", "10"]
    assert table.column("annotation_id").to_pylist() == ["9", "4", "100", "30"]

    images = [{"id": f"img{i}", "file_name": f"{i}.jpg", "width": 20, "height": 20} for i in (10, 2)]
    anns = [
        {"id": f"a{i}", "image_id": f"img{i}", "category_id": 1, "segmentation": [[2, 2, 12, 2, 12, 12]]}
        for i in (10, 2)
    ]
    table = read_source_index(write_coco(tmp_path / "b.json", images, anns), num_shards=1)
    assert table.column("image_id").to_pylist() == ["img10", "img2"]


def test_many_rle_rows_across_chunks_give_the_same_index(tmp_path, monkeypatch):
    # > 255 RLE rows per chunk (pycocotools.area's uint8 bug) and several chunks
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 40, "height": 30} for i in range(1, 41)]
    anns = []
    for k in range(400):
        x = k % 20
        anns.append(
            {
                "id": k + 1,
                "image_id": k % 40 + 1,
                "category_id": 1,
                "segmentation": [[x, 2.0, x + 10, 2.0, x + 10, 12.5, x, 12.5]],
                "iscrowd": 0,
            }
        )
    source = write_coco(tmp_path / "many.json", images, anns)
    whole = read_source_index(source, num_shards=3)
    monkeypatch.setattr(index_module, "CHUNK_ROWS", 7)
    chunked = read_source_index(source, num_shards=3)
    assert whole.equals(chunked)
    assert whole.num_rows == 400 and pc.min(whole.column("area")).as_py() > 0


def test_degenerate_masks_are_recorded_not_dropped(datasets):
    source = datasets["bad"]
    table = read_source_index(source, num_shards=2)
    errors = {r["annotation_id"]: r for r in table.to_pylist() if r["index_error"]}
    assert sorted(r["index_error"] for r in errors.values()) == [
        "degenerate_polygon",
        "empty_segmentation",
        "zero_area",
    ]
    for row in errors.values():
        assert row["area"] == 0
        with pytest.raises(ItemError) as info:
            decode_mask(row, source)
        assert info.value.reason == "invalid_mask"
    # a 2-point polygon beside a valid one is dropped from the instance, which stays usable
    nose = [r for r in table.to_pylist() if r["category"] == "nose" and r["image_id"] == "1"]
    two_part = [r for r in nose if json.loads(r["segmentation"]) and r["area"] > 0 and r["annotation_id"] == "1020"]
    assert len(two_part) == 1 and len(json.loads(two_part[0]["segmentation"])) == 1
    assert decode_mask(two_part[0], source).sum() == two_part[0]["area"]


def test_bad_image_paths_are_stored_as_given(datasets):
    files = set(read_source_index(datasets["bad"], num_shards=2).column("image_file").to_pylist())
    assert {"../../x.jpg", "missing.jpg", "broken.jpg"} <= files


def test_invalid_rle_is_an_index_error_and_never_decoded(tmp_path):
    images = [{"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 10], "counts": [5, 2000]}},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 10], "counts": "zz"}},
        {"id": 3, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 12], "counts": [5, 100, 15]}},
        {"id": 4, "image_id": 1, "category_id": 1, "segmentation": {"size": [10, 10], "counts": [22, 10, 68]}},
    ]
    source = write_coco(tmp_path / "rle.json", images, anns)
    rows = rows_by_id(read_source_index(source, num_shards=1))
    assert [rows[k]["index_error"] for k in "1234"] == [
        "invalid_rle",
        "invalid_rle",
        "segmentation_size_mismatch",
        None,
    ]
    assert rows["4"]["area"] == 10 and isinstance(json.loads(rows["4"]["segmentation"])["counts"], str)
    for k in "123":
        with pytest.raises(ItemError, match="invalid_mask"):
            decode_mask(rows[k], source)
    # the same bad RLE arriving without the index error (e.g. an edited table) is still refused
    with pytest.raises(ItemError, match="do not cover"):
        decode_mask(dict(rows["1"], index_error=None), source)
    mask = decode_mask(rows["4"], source)
    assert mask.sum() == 10 and mask[2:10, 2].all() and mask[:2, 3].all()


# --------------------------------------------------------------------------------------------
# malformed files fail at once, naming the file


def test_invalid_json_names_file_and_position(tmp_path):
    path = tmp_path / "annotations.json"
    path.write_text('{"images": [{"id": 1, "file_name": "a.jpg"},, ]}')
    with pytest.raises(AnnotationFileError) as info:
        read_source_index(SourceConfig(name="m", format="coco", images=str(tmp_path), annotations=str(path)), 2)
    assert str(path) in str(info.value) and "line 1 column 45" in str(info.value)


@pytest.mark.parametrize(
    "document, expected",
    [
        ({"images": [], "categories": []}, "missing top-level key 'annotations'"),
        ({"images": {}, "annotations": [], "categories": [{"id": 1, "name": "a"}]}, "'images' must be a list"),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                "annotations": [{"id": 7, "image_id": 2, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}],
                "categories": [{"id": 1, "name": "a"}],
            },
            "annotation 7 references unknown image_id 2",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                "annotations": [{"id": 7, "image_id": 1, "category_id": 5, "segmentation": [[1, 1, 5, 1, 5, 5]]}],
                "categories": [{"id": 1, "name": "a"}],
            },
            "annotation 7 references unknown category_id 5",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": [1, 1, 5, 1, 5, 5]}],
                "categories": [{"id": 1, "name": "a"}],
            },
            "annotation 7: 'segmentation' must be a list of polygons",
        ),
        (
            {"images": [{"id": 1, "file_name": "a.jpg", "height": 9}], "annotations": [], "categories": []},
            "'width' must be a positive integer",
        ),
        (
            {
                "images": [{"id": 1, "file_name": "a.jpg", "width": 9, "height": 9}],
                "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 5, 1, 5, 5]]}] * 2,
                "categories": [{"id": 1, "name": "a"}],
            },
            "annotation id '7' is used more than once",
        ),
    ],
)
def test_malformed_coco_files_fail_with_file_name(tmp_path, document, expected):
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(document))
    with pytest.raises(AnnotationFileError) as info:
        read_source_index(SourceConfig(name="m", format="coco", images=str(tmp_path), annotations=str(path)), 2)
    assert str(path) in str(info.value) and expected in str(info.value)


def test_truncated_json_fails(tmp_path, datasets):
    data = Path(datasets["coco"].annotation_files[0]).read_bytes()
    path = tmp_path / "cut.json"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AnnotationFileError, match="invalid JSON"):
        read_source_index(SourceConfig(name="m", format="coco", images=str(tmp_path), annotations=str(path)), 2)


def test_openimages_csv_missing_columns_and_unknown_label(tmp_path, datasets):
    good = datasets["oi"]
    lines = Path(good.annotation_files[0]).read_text().splitlines()
    header = lines[0].split(",")
    dropped = [",".join(f for i, f in enumerate(line.split(",")) if i != header.index("LabelName")) for line in lines]
    path = tmp_path / "no_label.csv"
    path.write_text("\n".join(dropped) + "\n")
    source = SourceConfig(
        name="m",
        format="openimages",
        images=good.images,
        annotations=str(path),
        masks=good.masks,
        class_descriptions=good.class_descriptions,
    )
    with pytest.raises(AnnotationFileError) as info:
        read_source_index(source, 2)
    assert str(path) in str(info.value) and "LabelName" in str(info.value)

    path = tmp_path / "unknown_label.csv"
    path.write_text("\n".join([lines[0], lines[1].replace("/m/", "/m/zz")]) + "\n")
    with pytest.raises(AnnotationFileError, match=r"unknown_label.csv: line 2: LabelName '/m/zz"):
        read_source_index(
            SourceConfig(
                name="m",
                format="openimages",
                images=good.images,
                annotations=str(path),
                masks=good.masks,
                class_descriptions=good.class_descriptions,
            ),
            2,
        )


# --------------------------------------------------------------------------------------------
# LVIS


def test_lvis_fields_and_missing_images(datasets):
    source = datasets["lvis"]
    table = read_source_index(source, num_shards=2)
    assert table.schema == INDEX_SCHEMA and table.num_rows == 9
    rows = table.to_pylist()
    shuttle = next(r for r in rows if r["category_id"] == "5")
    assert shuttle["category"] == "space shuttle" and shuttle["category_synonyms"] == ["space_shuttle"]
    assert shuttle["category_frequency"] == "r"
    camcorder = next(r for r in rows if r["category"] == "camcorder")
    assert camcorder["category_synonyms"] == ["camcorder", "video_camera"] and camcorder["category_frequency"] == "c"
    not_exhaustive = {(r["image_id"], r["category"]) for r in rows if r["category_not_exhaustive"]}
    assert not_exhaustive == {("397133", "spoon")}
    # the astronaut image has only a coco_url: its file name is the URL's last two parts
    assert {r["image_file"] for r in rows if r["image_id"] == "285"} == {"val2017/000000000285.jpg"}
    assert (Path(source.images) / "val2017/000000000285.jpg").is_file()
    # images not on disk still have their rows (the candidate stage reports them missing)
    missing = {r["image_file"] for r in rows if not (Path(source.images) / r["image_file"]).exists()}
    assert missing == {"val2017/000000000632.jpg", "train2017/000000000724.jpg"}
    assert all(r["index_error"] is None and r["area"] > 0 for r in rows)


# --------------------------------------------------------------------------------------------
# Open Images


def test_openimages_index_and_mask_resolution(datasets):
    source = datasets["oi"]
    table = read_source_index(source, num_shards=2)
    assert table.schema == INDEX_SCHEMA and table.num_rows == 9
    rows = table.to_pylist()
    in_subfolder = [r for r in rows if "/" in r["mask_file"]]
    assert in_subfolder and all(r["mask_file"][0] == r["mask_file"].split("/")[1][0] for r in in_subfolder)
    smaller = 0
    for row in rows:
        assert row["image_file"] == f"{row['image_id']}.jpg" and row["segmentation"] is None
        assert row["annotation_id"] == Path(row["mask_file"]).stem and row["category_synonyms"] == [row["category"]]
        with Image.open(Path(source.images) / row["image_file"]) as im:
            assert (row["width"], row["height"]) == im.size
        with Image.open(Path(source.masks) / row["mask_file"]) as im:
            smaller += im.size != (row["width"], row["height"])
        mask = decode_mask(row, source)
        assert mask.shape == (row["height"], row["width"])
        # area scaled from the stored mask agrees with the full-resolution decode within a few %
        assert abs(mask.sum() - row["area"]) <= 0.05 * row["area"]
        ys, xs = np.nonzero(mask)
        assert abs(xs.min() - row["bbox_x"]) <= 2 and abs(ys.min() - row["bbox_y"]) <= 2
    assert smaller >= 3  # half-resolution masks are part of the fixture
    assert {r["category"] for r in rows} >= {"Coffee cup", "Spoon", "Rocket", "Coin"}


def test_openimages_bad_masks(datasets):
    source = datasets["oi_bad"]
    rows = read_source_index(source, num_shards=2).to_pylist()
    errors = {r["index_error"]: r for r in rows if r["index_error"]}
    assert set(errors) == {"mask_missing", "mask_unreadable", "zero_area"}
    assert errors["mask_missing"]["bbox_w"] > 0  # box from the CSV when the image size is known
    for reason in ("mask_missing", "mask_unreadable"):
        with pytest.raises(ItemError) as info:
            decode_mask(errors[reason], source)
        assert info.value.reason == reason
    with pytest.raises(ItemError, match="empty_mask"):  # the one validator's code for a mask with no pixels
        decode_mask(errors["zero_area"], source)
    no_image = [r for r in rows if not (Path(source.images) / r["image_file"]).exists()]
    assert len(no_image) == 1 and (no_image[0]["width"], no_image[0]["height"]) == (160, 120)  # from the mask


def test_openimages_class_descriptions_without_header(tmp_path, datasets):
    good = datasets["oi"]
    body = Path(good.class_descriptions).read_text().splitlines()[1:]
    path = tmp_path / "class-descriptions-boxable.csv"
    path.write_text("\n".join(body) + "\n")
    source = SourceConfig(
        name="gen_oi",
        format="openimages",
        images=good.images,
        annotations=good.annotations,
        masks=good.masks,
        class_descriptions=str(path),
    )
    assert read_source_index(source, 2).equals(read_source_index(good, 2))


# --------------------------------------------------------------------------------------------
# the cache and the shards


def test_index_cache_is_built_once(tmp_path, datasets, monkeypatch):
    storage = Storage(tmp_path / "data")
    source = datasets["coco"]
    first = load_source_index(source, 2, storage)
    [path] = list(storage.index_dir(source.name).glob("*/instances.parquet"))
    stamp = path.stat().st_mtime_ns

    def no_parsing(*args, **kwargs):
        raise AssertionError("cache hit must not re-parse the annotation file")

    monkeypatch.setattr(index_module, "read_source_index", no_parsing)
    again = load_source_index(source, 2, storage)
    assert again.equals(first) and again.schema == INDEX_SCHEMA
    assert path.stat().st_mtime_ns == stamp
    monkeypatch.undo()

    # a different shard count or a touched annotation file is a new fingerprint
    load_source_index(source, 3, storage)
    annotations = Path(source.annotation_files[0])
    os.utime(annotations, ns=(stamp + 10**9, stamp + 10**9))
    load_source_index(source, 2, storage)
    assert len(list(storage.index_dir(source.name).glob("*/instances.parquet"))) == 3


def test_concurrent_shards_parse_the_annotation_file_once(tmp_path, datasets, monkeypatch):
    """Two shards of one source starting together (a backfill): one parses, the other waits for
    the cached index instead of parsing the same file at the same time."""
    import threading
    import time

    storage = Storage(tmp_path / "data")
    source = datasets["coco"]
    parses = []
    real_read = index_module.read_source_index

    def slow_counted_read(*args, **kwargs):
        parses.append(threading.get_ident())
        time.sleep(0.5)  # hold the build long enough for the other shard to arrive
        return real_read(*args, **kwargs)

    monkeypatch.setattr(index_module, "read_source_index", slow_counted_read)
    results = {}

    def run_shard(shard):
        results[shard] = shard_index(source, shard, 2, storage)

    threads = [threading.Thread(target=run_shard, args=(shard,)) for shard in ("000", "001")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(parses) == 1
    assert results["000"].num_rows + results["001"].num_rows == real_read(source, 2).num_rows


def test_cached_index_bytes_are_deterministic(tmp_path, datasets):
    paths = []
    for run in ("a", "b"):
        storage = Storage(tmp_path / run)
        load_source_index(datasets["lvis"], 2, storage)
        [path] = list(storage.index_dir("gen_lvis").glob("*/instances.parquet"))
        paths.append(path)
    assert paths[0].read_bytes() == paths[1].read_bytes()


@pytest.mark.parametrize("key", ["coco", "oi"])
def test_shards_partition_the_index(tmp_path, datasets, key):
    source = datasets[key]
    storage = Storage(tmp_path / "data")
    whole = load_source_index(source, 16, storage)
    parts = [shard_index(source, f"{s:03d}", 16, storage) for s in range(16)]
    assert all(p.schema == INDEX_SCHEMA for p in parts)
    assert sum(p.num_rows for p in parts) == whole.num_rows
    assert any(p.num_rows == 0 for p in parts)  # 5-6 images over 16 shards: some are empty
    assert pa.concat_tables(parts).equals(whole)
    for s, part in enumerate(parts):
        assert set(part.column("shard").to_pylist()) <= {f"{s:03d}"}


def test_fixtures_are_deterministic(tmp_path):
    def contents(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    for make in (make_coco_source, make_lvis_source, make_openimages_source):
        make(tmp_path / "a" / make.__name__)
        make(tmp_path / "b" / make.__name__)
        assert contents(tmp_path / "a" / make.__name__) == contents(tmp_path / "b" / make.__name__)


# --------------------------------------------------------------------------------------------
# inputs the fuzzed readers (test_fuzz_readers.py) found crashing, hanging or silently accepted

_IMAGE = {"id": 1, "file_name": "a.jpg", "width": 10, "height": 10}
_TRIANGLE = [[1, 1, 5, 1, 5, 5]]
_DEEP = "[" * 10_000 + "]" * 10_000


def _document(image=_IMAGE, **annotation) -> bytes:
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": _TRIANGLE, **annotation}
    return json.dumps({"images": [image], "annotations": [annotation], "categories": [{"id": 1, "name": "a"}]}).encode()


@pytest.mark.parametrize(
    "data, expected",
    [
        (_document(image_id=[1]), "annotation 1: 'image_id' must be an integer or a string, got [1]"),  # TypeError
        (_document(category_id={"a": 1}), "'category_id' must be an integer or a string"),  # TypeError
        (_document(image_id=1.0), "'image_id' must be an integer or a string, got 1.0"),  # matched image 1
        (_document(image_id=True), "'image_id' must be an integer or a string, got True"),  # matched image 1
        (_document(dict(_IMAGE, width=2**40)), "1099511627776 x 10 pixels is more than"),  # ArrowInvalid
        (_document(dict(_IMAGE, width=1e300)), "pixels is more than pycocotools can handle"),  # OverflowError
        (_document(dict(_IMAGE, file_name="a\x00b")), "file name 'a\\x00b' contains a NUL character"),
        (_document(segmentation="__deep__").replace(b'"__deep__"', _DEEP.encode()), "nested more than 64"),
        (b"[" * 50_000, "JSON nested more than 64 levels deep"),  # MemoryError in ijson
        (_document(dict(_IMAGE, file_name="\\udc00")).replace(b"\\\\udc00", b"\\udc00"), "invalid JSON"),
        (b"\xef\xbb\xbf" + _document(), "starts with a UTF-8 byte order mark"),
    ],
)
def test_fuzz_found_malformed_coco_files_fail_with_file_name(tmp_path, data, expected):
    path = tmp_path / "instances.json"
    path.write_bytes(data)
    with pytest.raises(AnnotationFileError) as info:
        read_source_index(SourceConfig(name="m", format="coco", images=str(tmp_path), annotations=str(path)), 2)
    assert str(info.value).startswith(str(path)) and expected in str(info.value)
    assert len(str(info.value)) < len(str(path)) + 300


def test_fuzz_found_lvis_coco_url_that_urlparse_refuses(tmp_path):
    path = tmp_path / "lvis.json"
    image = {"id": 1, "coco_url": "http://[abc/x.jpg", "width": 10, "height": 10}
    path.write_text(json.dumps({"images": [image], "annotations": [], "categories": []}))
    with pytest.raises(AnnotationFileError, match=r"lvis.json: images\[0\] \(id 1\): neither 'file_name' nor"):
        read_source_index(SourceConfig(name="m", format="lvis", images=str(tmp_path), annotations=str(path)), 2)


def test_fuzz_found_long_values_are_shortened_in_messages(tmp_path):
    annotation = {"id": "x" * 100_000, "image_id": 1, "category_id": 1, "segmentation": []}
    source = write_coco(tmp_path / "a.json", [_IMAGE], [annotation, annotation])
    with pytest.raises(AnnotationFileError, match="is used more than once") as info:
        read_source_index(source, 2)
    assert len(str(info.value)) < 300


def test_fuzz_found_bad_polygons_and_rles_are_per_instance_errors(tmp_path):
    zigzag = [0, 0, 2000, 0] * 1100 + [0, 5]  # in bounds, but an outline of 4.4 M pixels
    segmentations = {
        1: [[1, 1, 5e8, 1, 5, 5]],  # pycocotools segfaulted (or ran out of memory) on these three
        2: [[1, 1, 1e300, 1, 5, 5]],
        3: [[1, 1, 2**62, 1, 5, 5]],
        4: [zigzag],
        5: {"size": [2**20, 2**20], "counts": [2**40]},  # OverflowError in pycocotools
        6: {"size": [10, 10], "counts": [2**33, 0]},
        7: {"size": [10, 10], "counts": "Q" * 20_000 + "0"},  # quadratic in the validator
        8: [[1, 1, 9, 1, 9, 9], [-10, -10, 20, -10, 20, 20]],  # up to one image size outside: fine
    }
    image = {"id": 1, "file_name": "a.jpg", "width": 1000, "height": 10}
    anns = [{"id": k, "image_id": 1, "category_id": 1, "segmentation": v} for k, v in segmentations.items()]
    source = write_coco(
        tmp_path / "a.json", [image, dict(_IMAGE, id=2)], anns[:4] + [dict(a, image_id=2) for a in anns[4:]]
    )
    rows = rows_by_id(read_source_index(source, num_shards=1))
    assert [rows[str(k)]["index_error"] for k in segmentations] == [
        "invalid_polygon",
        "invalid_polygon",
        "invalid_polygon",
        "invalid_polygon",
        "segmentation_size_mismatch",
        "invalid_rle",
        "invalid_rle",
        None,
    ]
    for k in range(1, 8):
        assert rows[str(k)]["area"] == 0
        with pytest.raises(ItemError) as info:
            decode_mask(rows[str(k)], source)
        assert info.value.reason == "invalid_mask"
    assert decode_mask(rows["8"], source).sum() == rows["8"]["area"] > 0


@pytest.mark.parametrize(
    "row",
    [
        {"segmentation": "[[1,1,5,NaN,5,5]]"},  # segfault in pycocotools
        {"segmentation": "[[1,1,5,Infinity,5,5]]"},  # segfault
        {"segmentation": '[["1","1","5","1","nan","5"]]'},  # float("nan"): segfault
        {"segmentation": "[[" + ",".join(["1" * 400] * 6) + "]]"},  # OverflowError
        {"segmentation": "[[" + ",".join(["1" * 5000] * 6) + "]]"},  # ValueError (int digits limit)
        {"segmentation": "[" * 100_000 + "]" * 100_000},  # RecursionError
        {"segmentation": '{"size": 5, "counts": "0"}'},  # TypeError
        {"segmentation": '{"size": [10, 10], "counts": {"a": 1}}'},  # TypeError
        {"segmentation": '{"size": [10, 10], "counts": [150, -50]}'},  # OverflowError
        {"segmentation": '{"size": [10, 10], "counts": [50.5, 49.5]}'},  # decoded a 50-pixel mask
        {"segmentation": "[[1,1,5,1,5,5]]", "height": 2**31 - 1, "width": 2**31 - 1},  # segfault
        {"segmentation": "[[1,1,5,1,5,5]]", "height": "10"},  # TypeError
    ],
)
def test_fuzz_found_decode_mask_refuses_malformed_rows(tmp_path, row):
    row = {"annotation_id": "1", "height": 10, "width": 10, "index_error": None, **row}
    source = SourceConfig(name="m", format="coco", images=str(tmp_path), annotations=str(tmp_path / "a.json"))
    with pytest.raises(ItemError) as info:
        decode_mask(row, source)
    assert info.value.reason == "invalid_mask"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG claiming width x height pixels, with no pixel data: PIL refuses it as a decompression bomb."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_fuzz_found_openimages_paths_the_file_system_refuses(tmp_path, datasets):
    good = datasets["oi"]
    masks = tmp_path / "masks"
    masks.mkdir()
    (masks / "bomb.png").write_bytes(_png_header_only(30_000, 30_000))
    lines = Path(good.annotation_files[0]).read_text().splitlines()
    header, fields = lines[0], lines[1].split(",")
    image_id = fields[1]

    def source_with(*rows: list[str]) -> SourceConfig:
        path = tmp_path / "rows.csv"
        path.write_text("\n".join([header] + [",".join(r) for r in rows]) + "\n")
        return SourceConfig(
            name="m",
            format="openimages",
            images=good.images,
            annotations=str(path),
            masks=str(masks),
            class_descriptions=good.class_descriptions,
        )

    long_mask = ["m" * 300 + ".png", image_id, *fields[2:]]  # OSError: file name too long
    long_image = ["bomb.png", "i" * 300, *fields[2:]]  # OSError, and a DecompressionBombError
    rows = rows_by_id(read_source_index(source_with(long_mask, long_image), 2))
    assert rows["m" * 300]["index_error"] == "mask_missing" and rows["bomb"]["index_error"] == "mask_unreadable"
    source = source_with(long_mask, long_image)
    for row in rows.values():
        with pytest.raises(ItemError) as info:
            decode_mask(row, source)
        assert info.value.reason == row["index_error"]

    for bad, expected in (
        ([fields[0].replace(".png", "\x00.png"), *fields[1:]], "line 2: MaskPath or ImageID contains a NUL"),
        ([fields[0], image_id + "\x00", *fields[2:]], "line 2: MaskPath or ImageID contains a NUL"),  # ValueError
        ([*fields[:5], "inf", *fields[6:]], "line 2: BoxXMax is inf, not a finite number"),
    ):
        with pytest.raises(AnnotationFileError, match=expected):
            read_source_index(source_with(bad), 2)


# --------------------------------------------------------------------------------------------
# real data beside the project (optional)


@pytest.mark.skipif(not (SHARED_DATA / "coco128seg_50").is_dir(), reason="/work/shared/data/coco128seg_50 not present")
def test_real_coco128seg_matches_pycocotools():
    from pycocotools.coco import COCO

    folder = SHARED_DATA / "coco128seg_50"
    source = SourceConfig(
        name="coco128", format="coco", images=str(folder / "images"), annotations=str(folder / "annotations.json")
    )
    rows = rows_by_id(read_source_index(source, 4))
    coco = COCO(str(folder / "annotations.json"))
    assert len(rows) == len(coco.anns) == 426
    for ann_id in sorted(coco.anns)[::7]:
        ann = coco.anns[ann_id]
        expected = coco.annToMask(ann).astype(bool)
        row = rows[str(ann_id)]
        assert row["area"] == expected.sum()
        np.testing.assert_array_equal(decode_mask(row, source), expected)


@pytest.mark.skipif(not (SHARED_DATA / "lvis_val_100").is_dir(), reason="/work/shared/data/lvis_val_100 not present")
def test_real_lvis_val_100():
    path = SHARED_DATA / "lvis_val_100" / "annotations.json"
    source = SourceConfig(
        name="lvis100", format="lvis", images=str(SHARED_DATA / "lvis_val_100" / "images"), annotations=str(path)
    )
    table = read_source_index(source, 4)
    document = json.loads(path.read_text())
    assert table.num_rows == len(document["annotations"]) == 977
    not_exhaustive = {img["id"]: set(img["not_exhaustive_category_ids"]) for img in document["images"]}
    expected = sum(a["category_id"] in not_exhaustive[a["image_id"]] for a in document["annotations"])
    assert pc.sum(table.column("category_not_exhaustive")).as_py() == expected
    assert set(table.column("category_frequency").to_pylist()) <= {"r", "c", "f"}
    assert not any("_" in c for c in table.column("category").to_pylist())

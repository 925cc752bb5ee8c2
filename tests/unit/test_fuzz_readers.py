"""Fuzzed readers: malformed COCO, LVIS and Open Images inputs, generated with hypothesis.

The property every test checks, for what the graph runs (`load_source_index`, the source_index
stage's entry point, and `decode_mask`, the stages' per-instance mask decode):

- the reader raises AnnotationFileError whose message starts with the file's path and says what
  is wrong, or
- it indexes every annotation (one row each) and every row either decodes to a non-empty HxW
  bool mask or carries a per-instance reason: `index_error` in checks.INDEX_ERRORS, and
  decode_mask raising ItemError with a reason of pbi_ml.reasons.ITEM_REASONS.

Any other exception (KeyError, TypeError, OverflowError, RecursionError, MemoryError, a numpy or
pycocotools ValueError) fails the test, and so does an example slower than the deadline.

Examples are derandomized (the same ones on every run). PBI_FUZZ_SCALE=10 runs ten times as
many, for a longer local hunt.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pbi_ml.config import SourceConfig
from pbi_ml.errors import AnnotationFileError, ItemError
from pbi_ml.reasons import ITEM_REASONS
from pbi_ml.sources import INDEX_SCHEMA, decode_mask, load_source_index
from pbi_ml.sources.checks import INDEX_ERRORS, MAX_JSON_DEPTH, coco_mask
from pbi_ml.storage import Storage

SCALE = float(os.environ.get("PBI_FUZZ_SCALE", "1"))

settings.register_profile(
    "fuzz",
    derandomize=True,  # reproducible in CI: the same examples on every run
    deadline=timedelta(seconds=10),  # a hang fails the test (a normal example takes milliseconds)
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
    print_blob=True,
)
FUZZ = settings.get_profile("fuzz")


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(n * SCALE)))


# --------------------------------------------------------------------------------------------
# the property


def check_source(source: SourceConfig, root: Path, expected_rows: int | None) -> None:
    """Run the graph's entry point on `source`; check the outcome as the module docstring says."""
    storage = Storage(root / "data")
    try:
        table = load_source_index(source, 2, storage)
    except AnnotationFileError as exc:
        files = list(source.annotation_files) + ([source.class_descriptions] if source.class_descriptions else [])
        assert any(f in exc.path for f in files), exc
        assert str(exc).startswith(exc.path) and exc.problem.strip(), exc
        assert len(exc.problem) < 1000, exc  # values are shortened in messages, whatever their size
        return
    assert table.schema == INDEX_SCHEMA
    if expected_rows is not None:
        assert table.num_rows == expected_rows  # every annotation is indexed, none dropped
    for row in table.to_pylist():
        check_row(row, source)


def check_row(row: dict, source: SourceConfig) -> None:
    if row["index_error"] is not None:
        assert row["index_error"] in INDEX_ERRORS, row["index_error"]
        assert row["area"] == 0
        with pytest.raises(ItemError) as info:
            decode_mask(row, source)
        assert info.value.reason in ITEM_REASONS, info.value
        return
    mask = decode_mask(row, source)  # an instance the index calls usable must decode
    assert mask.dtype == bool and mask.shape == (row["height"], row["width"]) and mask.any()
    if source.format == "openimages":
        assert row["area"] > 0
    else:
        assert mask.sum() == row["area"]


def check_decode(row: dict, source: SourceConfig) -> None:
    try:
        mask = decode_mask(row, source)
    except ItemError as exc:
        assert exc.reason in ITEM_REASONS, exc
        return
    assert mask.dtype == bool and mask.shape == (row["height"], row["width"]) and mask.any()


# --------------------------------------------------------------------------------------------
# building blocks


def percent(draw, n: int) -> bool:
    """True in about n % of the draws (st.integers would favour 0: shrinking, not sampling)."""
    return draw(st.sampled_from(range(100))) < n


@st.composite
def mostly(draw, valid, invalid, percent_invalid: int = 15):
    """`valid` most of the time, `invalid` otherwise."""
    return draw(invalid) if percent(draw, percent_invalid) else draw(valid)


@st.composite
def weighted(draw, *choices):
    """One of the (weight, strategy) choices, drawn in proportion to the weights."""
    pick = draw(st.sampled_from(range(sum(weight for weight, _ in choices))))
    for weight, strategy in choices:
        if pick < weight:
            return draw(strategy)
        pick -= weight
    raise AssertionError("unreachable")


ODD_STRINGS = st.sampled_from(["", "\x00", "a\x00b", "\udc00", "../x", "/abs", "é", "x" * 300, "[[", '"'])
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.text(max_size=6),
    ODD_STRINGS,
)
WEIRD = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8,
)
DEEP = "__deep__"  # replaced by this many nested lists in the JSON text
DEPTHS = st.sampled_from([MAX_JSON_DEPTH - 5, MAX_JSON_DEPTH, MAX_JSON_DEPTH + 1, 1000, 10_000])

# the value kinds a single bad instance may have (the file stays well-formed)
NUMBER = st.integers(-2, 30) | st.floats(-2, 30, width=32)
HUGE = st.sampled_from([1e6, -1e6, 2.5e8, 1e300, -1e300, 2**62, -(2**62), 2**63 - 1, -(2**63)])


@st.composite
def polygon(draw):
    """3 to 7 points, sometimes one huge coordinate."""
    coordinates = draw(
        st.integers(3, 7).flatmap(lambda points: st.lists(NUMBER, min_size=2 * points, max_size=2 * points))
    )
    if percent(draw, 6):
        coordinates[draw(st.integers(0, len(coordinates) - 1))] = draw(HUGE)
    return coordinates


POLYGONS = st.lists(
    weighted(
        (12, polygon()),
        (3, st.lists(NUMBER, max_size=14)),  # odd lengths, fewer than 3 points
        (1, st.lists(NUMBER | SCALARS, min_size=1, max_size=8)),  # not all numbers: a malformed file
    ),
    min_size=1,
    max_size=3,
)
# image sizes a well-formed file may have: small, or as large as a side may be (never a size whose full
# mask takes gigabytes to decode); and sizes past the limits or of the wrong type, for a malformed file
GOOD_SIDE = mostly(st.integers(1, 40), st.sampled_from([2**20, 17.0]), 5)
BAD_SIDE = st.sampled_from([0, -1, -(2**31), 2**20 + 1, 2**31, 2**63 - 1, 10**18, 1e300, 17.5, "10", True]) | WEIRD


def run_lengths(draw, total: int) -> list[int]:
    """Runs (zeros first, alternating) that cover `total` pixels."""
    cuts = sorted(draw(st.lists(st.integers(0, total), max_size=6)))
    bounds = [0, *cuts, total]
    return [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def compressed(runs: list[int], height: int, width: int) -> str:
    rle = coco_mask().frPyObjects({"size": [height, width], "counts": runs}, height, width)
    return rle["counts"].decode("ascii")


@st.composite
def rle_segmentation(draw, height: int, width: int):
    size = draw(
        weighted(
            (16, st.just([height, width])),
            (2, st.sampled_from([[width, height], [height + 1, width], [2**20, 2**20], [2**31, 2**31]])),
            (1, st.lists(BAD_SIDE, max_size=3) | WEIRD),  # malformed: a negative or non-integer size, ...
        )
    )
    total = height * width
    runs = run_lengths(draw, total)
    kind = draw(weighted((3, st.just("list")), (3, st.just("string")), (2, st.just("bad_list"))))
    kind = draw(
        weighted((8, st.just(kind)), (2, st.just("bad_string")), (1, st.just("overlong")), (1, st.just("other")))
    )
    if kind == "list":
        counts = runs
    elif kind == "string":
        counts = compressed(runs, height, width)
    elif kind == "bad_list":  # runs that do not cover the size, too long for uint32; rarely not integers
        counts = list(runs)
        index = draw(st.integers(0, len(counts) - 1))
        bad = weighted((6, st.integers(0, total) | st.sampled_from([2**32, 2**33, 2**63 - 1])), (1, SCALARS))
        counts[index] = draw(bad)
    elif kind == "bad_string":  # a valid string cut short or extended, or any text
        text = compressed(runs, height, width)
        counts = draw(
            st.sampled_from([text[:-1], text + "0", text + "a", text[1:], ""])
            | st.text(max_size=12)
            | st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=130), max_size=12)
        )
    elif kind == "overlong":  # continuation characters without end (a run of hundreds of bits)
        counts = draw(st.sampled_from("PQo")) * draw(st.integers(1, 3000)) + "0"
    else:
        counts = draw(WEIRD)
    segmentation = {"size": size, "counts": counts}
    if percent(draw, 3):
        del segmentation[draw(st.sampled_from(["size", "counts"]))]
    return segmentation


@st.composite
def segmentation(draw, height: int, width: int):
    """A COCO segmentation for an image of height x width: mostly well-typed, often a bad mask."""
    if height * width > 4096:
        height, width = 10, 10  # an RLE for another size: a size mismatch
    return draw(
        weighted(
            (10, POLYGONS),  # odd lengths, < 3 points, huge coordinates, zero area
            (8, rle_segmentation(height, width)),
            (2, st.sampled_from([None, [], {}, [[]]])),
            (1, st.lists(NUMBER, min_size=6, max_size=8)),  # a flat list: malformed
            (1, WEIRD),
        )
    )


@dataclass
class Document:
    data: bytes
    expected_rows: int | None  # None when the bytes were mutated after encoding


def mutated_bytes(draw, data: bytes) -> bytes:
    """Cut short, invalid UTF-8 inserted, a BOM, or other bytes altogether."""
    mutation = draw(st.sampled_from(["truncate", "bad_bytes", "bom", "other"]))
    if mutation == "truncate":
        return data[: draw(st.integers(0, max(0, len(data) - 1)))]
    if mutation == "bad_bytes":
        at = draw(st.integers(0, len(data)))
        return data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\x80\x80"])) + data[at:]
    if mutation == "bom":
        return b"\xef\xbb\xbf" + data
    return draw(st.sampled_from([b"", b" ", b"[", b"{", b"null", b"[]", b'"x"', b"[" * 100_000]) | st.binary())


@st.composite
def coco_like_document(draw, lvis: bool) -> Document:
    """A COCO / LVIS document whose instances often have bad masks, with at most one file-level fault."""
    images = []
    for image_id in range(1, draw(st.integers(1, 3)) + 1):
        image = {"id": image_id, "width": draw(GOOD_SIDE), "height": draw(GOOD_SIDE)}
        if image["width"] == image["height"] == 2**20:
            image["height"] = 1
        if lvis and draw(st.booleans()):
            image["coco_url"] = f"http://images.cocodataset.org/val2017/{image_id:012d}.jpg"
        else:
            image["file_name"] = draw(st.sampled_from(["a.jpg", "b/c.jpg", "../d.jpg", "é.jpg"]))
        if lvis:
            image["not_exhaustive_category_ids"] = draw(st.lists(st.integers(1, 2), max_size=2))
            image["neg_category_ids"] = []
        images.append(image)
    categories = []
    for category_id in range(1, draw(st.integers(1, 2)) + 1):
        category = {"id": category_id, "name": draw(st.sampled_from(["cat", "baseball_bat"]))}
        if lvis:
            category["frequency"] = draw(st.sampled_from(["r", "c", "f"]))
            category["synonyms"] = ["cat"]
        categories.append(category)
    annotations = []
    for annotation_id in range(1, draw(st.integers(0, 5)) + 1):
        image = draw(st.sampled_from(images))
        size = (int(image["height"]), int(image["width"]))
        annotation = {
            "id": annotation_id,
            "image_id": image["id"],
            "category_id": draw(st.sampled_from(categories))["id"],
            "segmentation": draw(segmentation(*size)),
        }
        if not lvis:
            annotation["iscrowd"] = draw(st.sampled_from([0, 1]))
        annotations.append(annotation)
    document = {"images": images, "annotations": annotations, "categories": categories}
    sections = {"images": images, "categories": categories, "annotations": annotations}

    fault = draw(weighted((10, st.just("none")), (8, st.just("field")), (2, st.just("duplicate"))))
    fault = draw(weighted((12, st.just(fault)), (1, st.just("top_level")), (1, st.just("deep")), (2, st.just("bytes"))))
    if fault in ("field", "duplicate", "deep"):
        section = draw(st.sampled_from([k for k, v in sections.items() if v]))
        entry = draw(st.sampled_from(sections[section]))
        field = draw(st.sampled_from(sorted(entry) + ["extra"]))
        if fault == "duplicate":
            entry["id"] = sections[section][0]["id"]
            if draw(st.booleans()):
                sections[section].append(dict(entry))
        elif fault == "deep":
            entry[field] = DEEP
        elif percent(draw, 20):
            entry.pop(field, None)
        else:  # a value of the wrong type, a bad size, an unknown reference, an odd string ...
            entry[field] = draw(
                BAD_SIDE if field in ("width", "height") else (ODD_STRINGS | WEIRD | st.integers(-2, 9))
            )
    elif fault == "top_level":
        key = draw(st.sampled_from(sorted(document)))
        if draw(st.booleans()):
            del document[key]
        else:
            document[key] = draw(WEIRD)

    text = json.dumps(document, ensure_ascii=draw(st.booleans()))  # NaN / Infinity where floats are
    text = text.replace(json.dumps(DEEP), "[" * draw(DEPTHS) + "]" * draw(DEPTHS))
    data = text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes invalid UTF-8
    if fault == "bytes":
        return Document(data=mutated_bytes(draw, data), expected_rows=None)
    expected = len(annotations) if document.get("annotations") is annotations else None
    return Document(data=data, expected_rows=expected)


# --------------------------------------------------------------------------------------------
# COCO and LVIS


@examples(200)
@given(coco_like_document(lvis=False))
def test_fuzzed_coco_files_fail_cleanly_or_index_every_instance(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "instances.json"
        path.write_bytes(document.data)
        source = SourceConfig(name="fuzz", format="coco", images=tmp, annotations=str(path))
        check_source(source, Path(tmp), document.expected_rows)


@examples(150)
@given(coco_like_document(lvis=True))
def test_fuzzed_lvis_files_fail_cleanly_or_index_every_instance(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lvis_v1_val.json"
        path.write_bytes(document.data)
        source = SourceConfig(name="fuzz", format="lvis", images=tmp, annotations=str(path))
        check_source(source, Path(tmp), document.expected_rows)


@st.composite
def segmentation_text(draw):
    kind = draw(st.sampled_from(["json"] * 6 + ["deep", "big_int", "text"]))
    if kind == "deep":
        depth = draw(st.sampled_from([100, 5000, 100_000]))
        return "[" * depth + "]" * draw(st.sampled_from([0, depth]))
    if kind == "big_int":  # json.loads refuses more than 4300 digits with a ValueError
        return "[[" + ",".join(["1" * draw(st.sampled_from([20, 400, 5000]))] * 6) + "]]"
    if kind == "text":
        return draw(st.text(max_size=20))
    return json.dumps(draw(segmentation(12, 9)))  # NaN and Infinity included (json.loads accepts them)


@examples(300)
@given(
    text=segmentation_text(),
    height=mostly(
        st.integers(1, 30) | st.integers(1, 30).map(np.int32),  # rows may come from pandas
        st.sampled_from([None, 0, -3, 2**20 + 1, 2**31 - 1, 5.0, "7", True]),
        8,
    ),
    width=mostly(st.integers(1, 30), st.sampled_from([None, 0, -3, 2**20 + 1, 2**31 - 1, 5.0, "7"]), 8),
)
def test_fuzzed_segmentations_decode_or_fail_with_a_reason(text, height, width):
    # a row that may have been edited after the reader checked it: decode_mask checks it again
    row = {"annotation_id": "1", "height": height, "width": width, "segmentation": text, "index_error": None}
    check_decode(row, SourceConfig(name="fuzz", format="coco", images=".", annotations="unused.json"))


# --------------------------------------------------------------------------------------------
# Open Images


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with no pixel data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def oi_root(tmp_path_factory) -> Path:
    """Images and masks the fuzzed CSVs point at: good, half-size, empty, garbage, bombs, a folder."""
    root = tmp_path_factory.mktemp("oi")
    images, masks = root / "images", root / "masks"
    (masks / "o").mkdir(parents=True)
    images.mkdir()
    Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(images / "img_a.jpg")
    (images / "img_b.jpg").write_bytes(b"not a jpeg")
    (images / "img_bomb.jpg").write_bytes(png_header_only(30_000, 30_000))
    square = np.zeros((20, 30), np.uint8)
    square[5:12, 4:20] = 255
    (masks / "ok_a.png").write_bytes(png(square))
    (masks / "o" / "ok_sub.png").write_bytes(png(square))  # the official zips' sub-folder layout
    (masks / "half.png").write_bytes(png(square[::2, ::2]))
    (masks / "zero.png").write_bytes(png(np.zeros((20, 30), np.uint8)))
    (masks / "garbage.png").write_bytes(b"\x89PNG not really")
    (masks / "bomb.png").write_bytes(png_header_only(30_000, 30_000))
    (masks / "dir.png").mkdir()
    return root


OI_HEADER = ["MaskPath", "ImageID", "LabelName", "BoxID", "BoxXMin", "BoxXMax", "BoxYMin", "BoxYMax"]
# what one instance's MaskPath / ImageID may be in a well-formed CSV (the instance may still be unusable)
MASK_PATHS = st.sampled_from(
    ["ok_a.png", "ok_sub.png", "o/ok_sub.png", "half.png", "zero.png", "garbage.png", "bomb.png", "dir.png"]
    + ["missing.png", "../images/img_a.jpg", "a/../../x.png", "/etc/hostname", "./ok_a.png", ".", "o/", "é.png"]
    + ["m" * 300 + ".png", "ok_a"]
)
IMAGE_IDS = mostly(
    st.sampled_from(["img_a", "img_b"]),
    st.sampled_from(["img_bomb", "missing", "../images/img_a", "../x", "/abs", "i" * 300, "é"]),
    30,
)
BOX_VALUE = mostly(st.floats(0, 1).map(str), st.sampled_from(["", "-0", "1e-320", " 0.5", "2"]), 5)
BAD_BOX_VALUE = st.sampled_from(["nan", "inf", "-inf", "1e400", "abc", "0x1p-2", "1,5", "1e308"])


@dataclass
class OpenImagesFiles:
    csv: bytes
    classes: bytes
    expected_rows: int | None


def csv_bytes(rows: list[list[str]]) -> bytes:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue().encode("utf-8", "surrogatepass")


@st.composite
def openimages_files(draw) -> OpenImagesFiles:
    """A segmentation CSV whose instances are often unusable, with at most one file-level fault."""
    header = list(OI_HEADER) + draw(st.lists(st.sampled_from(["PredictedIoU", "Clicks"]), max_size=2, unique=True))
    if draw(st.booleans()):
        header = draw(st.permutations(header))
    data_rows = []
    for _ in range(draw(st.integers(0, 5))):
        values = {
            "MaskPath": draw(MASK_PATHS),
            "ImageID": draw(IMAGE_IDS),
            "LabelName": draw(st.sampled_from(["/m/a", "/m/b"])),
            "BoxID": draw(st.text(max_size=3)),
        }
        for column in OI_HEADER[4:]:
            values[column] = draw(BOX_VALUE)
        data_rows.append([values.get(column, "0.5") for column in header])
    class_rows = [["/m/a", "Thing"], ["/m/b", "Other, with a comma"]]
    if draw(st.booleans()):
        class_rows.insert(0, ["LabelName", "DisplayName"])
    classes = csv_bytes(class_rows)

    faults = ["none"] * 10 + ["header", "field", "value", "duplicate", "bytes", "classes"]
    fault = draw(st.sampled_from(faults if data_rows else ["none", "header", "bytes", "classes"]))
    if fault == "header":  # a required column missing, or a duplicate, or no header at all
        kind = draw(st.sampled_from(["missing", "duplicate", "none"]))
        if kind == "missing":
            header[header.index(draw(st.sampled_from(OI_HEADER)))] = "Renamed"
        elif kind == "duplicate":
            header[draw(st.integers(0, len(header) - 1))] = draw(st.sampled_from(OI_HEADER))
        else:
            header = None
    elif fault == "field":  # a field too few or too many
        index = draw(st.integers(0, len(data_rows) - 1))
        data_rows[index] = data_rows[index][:-1] if draw(st.booleans()) else [*data_rows[index], "extra"]
    elif fault == "value":  # a bad box value, an unknown or empty label, a NUL or empty path, a newline ...
        row = draw(st.sampled_from(data_rows))
        column = draw(st.sampled_from(header))
        if column.startswith("Box") and column != "BoxID":
            row[header.index(column)] = draw(BAD_BOX_VALUE)
        else:
            row[header.index(column)] = draw(st.sampled_from(["", "\x00", "a\x00b", "/m/zz", "a\nb", '"']))
    elif fault == "duplicate":
        data_rows.append(list(draw(st.sampled_from(data_rows))))
    elif fault == "classes":  # a malformed class descriptions file
        classes = draw(
            st.sampled_from([b"", b"\n\n", b"/m/a,Thing,extra\n", b"/m/a,Thing\n/m/a,Other\n", b"/m/a,Th\xffing\n"])
        )
    data = csv_bytes(([header] if header else []) + data_rows)
    if fault == "bytes":
        data = mutated_bytes(draw, data)
    elif draw(st.integers(0, 9)) == 0:  # Windows line ends: a well-formed file still
        data = data.replace(b"\n", b"\r\n")
    expected = len(data_rows) if fault not in ("header", "bytes") else None
    return OpenImagesFiles(csv=data, classes=classes, expected_rows=expected)


@examples(150)
@given(files=openimages_files())
def test_fuzzed_openimages_csvs_fail_cleanly_or_index_every_instance(oi_root, files):
    with tempfile.TemporaryDirectory() as tmp:
        annotations, classes = Path(tmp) / "segmentations.csv", Path(tmp) / "classes.csv"
        annotations.write_bytes(files.csv)
        classes.write_bytes(files.classes)
        source = SourceConfig(
            name="fuzz",
            format="openimages",
            images=str(oi_root / "images"),
            annotations=str(annotations),
            masks=str(oi_root / "masks"),
            class_descriptions=str(classes),
        )
        check_source(source, Path(tmp), files.expected_rows)


@examples(100)
@given(
    mask_file=weighted(
        (4, st.sampled_from(["ok_a.png", "o/ok_sub.png", "half.png", "./ok_a.png"])),
        (6, MASK_PATHS),
        (1, st.sampled_from(["", "\x00", "a\x00b"])),
        (2, st.text(max_size=8)),
    ),
    height=mostly(st.integers(1, 40), st.sampled_from([None, 0, -1, 2**31 - 1]), 8),
    width=mostly(st.integers(1, 40), st.sampled_from([None, 0, -1, 2**31 - 1]), 8),
)
def test_fuzzed_openimages_rows_decode_or_fail_with_a_reason(oi_root, mask_file, height, width):
    source = SourceConfig(
        name="fuzz",
        format="openimages",
        images=str(oi_root / "images"),
        annotations="unused.csv",
        masks=str(oi_root / "masks"),
        class_descriptions="unused.csv",
    )
    row = {"annotation_id": "1", "height": height, "width": width, "mask_file": mask_file, "index_error": None}
    check_decode(row, source)

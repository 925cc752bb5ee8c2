"""The spatial check: position words in a rewrite against the object's box, in the instruction check
and through the instructions stage into the catalog."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses

import duckdb
import numpy as np
import pytest

from pbi_ml import tables
from pbi_ml.instruct import InstructConfig, InstructionChecker, TemplateWriter
from pbi_ml.instruct.spatial import (
    CONTRADICTS_LOCATION,
    ObjectCells,
    claimed_cells,
    location_contradiction,
    object_cells,
    phrase_claims,
)
from pbi_ml.storage import Storage, table_from_records

W, H = 640, 480
# boxes (x, y, w, h) in a 640 x 480 image, each wholly inside one 3x3 cell or spanning several
TOP_LEFT = (20, 20, 150, 100)
TOP = (250, 20, 140, 100)
TOP_RIGHT = (470, 20, 150, 100)
RIGHT = (450, 180, 160, 100)  # middle row, right third
BOTTOM_LEFT = (20, 350, 150, 100)
BOTTOM = (250, 350, 140, 100)
CENTRE = (250, 180, 140, 100)
LEFT_TWO_THIRDS = (20, 180, 380, 100)  # left and middle columns, middle row
WIDE_TOP = (20, 20, 600, 100)  # every column of the top row


@pytest.mark.parametrize(
    "instruction,box,contradiction",
    [
        # contradicting: every claimed cell two or more steps from the object
        ("add a dog on the left", RIGHT, "on the left"),
        ("add a dog on the left", TOP_RIGHT, "on the left"),
        ("add a dog on the right side", BOTTOM_LEFT, "on the right side"),
        ("add a dog at the bottom", TOP_LEFT, "at the bottom"),
        ("put a cat in the upper part of the image", BOTTOM, "in the upper part of the image"),
        ("add a lamp in the top left corner", CENTRE, "in the top left corner"),
        ("add a lamp in the top-left corner", TOP_RIGHT, "in the top-left corner"),
        ("add a lamp in the bottom right-hand corner.", TOP_LEFT, "in the bottom right-hand corner"),
        ("add a ball in the center", TOP_LEFT, "in the center"),
        ("add a ball in the middle of the picture", BOTTOM_LEFT, "in the middle of the picture"),
        ("add a boat at the top center", BOTTOM, "at the top center"),
        ("add a dog on the far left with a red collar", RIGHT, "on the far left"),
        ("add a dog on the right, facing left", BOTTOM_LEFT, "on the right"),
        ("add a bird near the top", BOTTOM, "near the top"),
        ("add a dog at the bottom to the image", TOP_LEFT, "at the bottom"),  # the template writer's endings
        ("insert a dog on the left into the scene", RIGHT, "on the left"),
        ("Add a Dog On The Left", RIGHT, "On The Left"),
        # agreeing
        ("add a dog on the left", TOP_LEFT, None),
        ("add a dog on the right", RIGHT, None),
        ("add a dog at the bottom", BOTTOM, None),
        ("add a lamp in the top left corner", TOP_LEFT, None),
        ("add a ball in the center", CENTRE, None),
        ("add a dog on the left", WIDE_TOP, None),  # touches the left third
        # one step is tolerated: loosely described, not wrong
        ("add a dog on the left", CENTRE, None),
        ("add a dog on the right", LEFT_TWO_THIRDS, None),
        ("add a lamp in the top left corner", TOP, None),  # top centre
        ("add a ball in the center", RIGHT, None),
        # not judged: relations to another object, other nouns, directions, depth
        ("add a dog sitting on the left side of the sofa", RIGHT, None),
        ("add a cup to the left of the laptop", RIGHT, None),
        ("add a cat at the top of the stairs", BOTTOM, None),
        ("add a book on the top shelf", BOTTOM, None),
        ("add a bus with people on the upper deck", BOTTOM, None),
        ("add a dog looking to the left", RIGHT, None),
        ("add a dog facing left", RIGHT, None),
        ("add a tree in the background", BOTTOM, None),
        ("add a dog in the foreground", TOP_LEFT, None),
        ("add a dog in the middle of the road", TOP_LEFT, None),
        ("add a dog on the left right", RIGHT, None),  # two words on one axis: no claim
        ("add a brown dog", RIGHT, None),
    ],
)
def test_spatial_rule(instruction, box, contradiction):
    assert location_contradiction(instruction, object_cells(box, W, H, None)) == contradiction


def test_claimed_cells_table():
    row = lambda r: {(r, c) for c in range(3)}  # noqa: E731
    col = lambda c: {(r, c) for r in range(3)}  # noqa: E731
    assert claimed_cells(["left"]) == col(0) and claimed_cells(["right"]) == col(2)
    assert claimed_cells(["top"]) == claimed_cells(["upper"]) == row(0)
    assert claimed_cells(["bottom"]) == claimed_cells(["lower"]) == row(2)
    assert claimed_cells(["center"]) == claimed_cells(["centre"]) == claimed_cells(["middle"]) == {(1, 1)}
    assert claimed_cells(["top", "left"]) == claimed_cells(["upper", "left"]) == {(0, 0)}
    assert claimed_cells(["bottom", "right"]) == {(2, 2)}
    assert claimed_cells(["top", "center"]) == {(0, 1)} and claimed_cells(["center", "left"]) == {(1, 0)}
    assert claimed_cells(["left", "right"]) is None and claimed_cells(["top", "bottom"]) is None


def test_object_cells_from_the_box_else_the_location():
    assert object_cells(TOP_LEFT, W, H, "bottom right") == ObjectCells(0, 0, 0, 0)  # the box decides
    assert object_cells(LEFT_TWO_THIRDS, W, H, None) == ObjectCells(1, 1, 0, 1)
    assert object_cells((0, 0, W, H), W, H, None) == ObjectCells(0, 2, 0, 2)
    assert object_cells((W / 3, 0, W / 3, 10), W, H, None) == ObjectCells(0, 0, 1, 1)  # edges on the grid lines
    assert object_cells(None, W, H, "bottom left") == ObjectCells(2, 2, 0, 0)
    assert object_cells((None, None, None, None), W, H, "center") == ObjectCells(1, 1, 1, 1)
    assert object_cells((None, None, None, None), None, None, None) is None
    # without a box the single location cell is the object: "on the right" of a left object contradicts
    assert location_contradiction("add a dog on the right", object_cells(None, W, H, "left")) == "on the right"


def test_the_embedded_writers_add_no_position_phrases():
    """The pixels describer and the template writer (the embedded defaults) never place the object:
    on their text the spatial check can reject nothing."""
    import skimage.data

    from pbi_ml.describe import DescribeConfig, DescribeItem, make_describer

    photo = skimage.data.astronaut()
    yy, xx = np.mgrid[: photo.shape[0], : photo.shape[1]]
    items = []
    for cy, cx in ((80, 80), (80, 430), (256, 256), (430, 80), (430, 430), (256, 60)):
        items.append(DescribeItem(photo, ((yy - cy) / 60) ** 2 + ((xx - cx) / 40) ** 2 <= 1, "person"))
    descriptions = make_describer(DescribeConfig()).describe(items)
    rewrites = TemplateWriter().rewrite(descriptions * 8, ["person"] * 48, [f"demo|{k}" for k in range(48)])
    assert len(set(rewrites)) > 4, "several templates"
    assert [t for t in descriptions + rewrites if phrase_claims(t)] == []


# ---- in the instruction check and the stage


def test_the_check_rejects_a_contradicting_rewrite(checker):
    cells = [object_cells(RIGHT, W, H, None)] * 4
    results = checker.check(
        ["add a brown dog on the left", "add a brown dog on the right", "add a red car on the left", "add a brown dog"],
        ["dog"] * 4,
        ["a brown dog"] * 4,
        [["dog"]] * 4,
        cells,
    )
    assert [(r.ok, r.reason) for r in results] == [
        (False, CONTRADICTS_LOCATION),
        (True, None),
        (False, "does_not_name_object"),  # the first failing test names the reason
        (True, None),
    ]
    assert results[0].lexical_ok and results[0].similarity > 0.5
    # without cells (spatial check off) the same rewrite passes
    assert checker.check(["add a brown dog on the left"], ["dog"], ["a brown dog"], [["dog"]])[0].ok


def test_the_check_rejects_without_an_embedding_model(tmp_path):
    lexical = InstructionChecker(InstructConfig(check_model=str(tmp_path / "missing")))
    left, right = lexical.check(
        ["add a dog on the left", "add a dog on the right"],
        ["dog", "dog"],
        ["a dog", "a dog"],
        [["dog"], ["dog"]],
        [object_cells(RIGHT, W, H, None)] * 2,
    )
    assert (left.ok, left.reason) == (False, CONTRADICTS_LOCATION)
    assert (right.ok, right.reason) == (True, "semantic_check_unavailable")


# (description, box): the template writer turns each description into a rewrite that keeps its words
PAIRS = (
    ("a brown dog on the left", RIGHT),  # contradicts: the dog is in the right third
    ("a brown dog on the right", RIGHT),
    ("a brown dog sitting on the left side of the sofa", RIGHT),  # relational: not judged
    ("a brown dog at the bottom", TOP_LEFT),  # contradicts
    ("a brown dog", TOP_LEFT),
)


def _write_partition(storage: Storage, source: str, shard: str) -> list[str]:
    """A pairs and a descriptions table of ok pairs of class dog with the boxes of PAIRS."""
    pairs, described = [], []
    for i, (description, (x, y, w, h)) in enumerate(PAIRS):
        base = {"pair_id": f"{source}/img{i}/{i}", "source": source, "shard": shard, "annotation_id": str(i)}
        base |= {"image_id": f"img{i}", "category": "dog"}
        cells = object_cells((x, y, w, h), W, H, None)
        assert cells is not None and cells.row0 == cells.row1 and cells.col0 == cells.col1
        location = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
        pairs.append(
            {
                **base,
                "category_synonyms": ["dog"],
                "width": W,
                "height": H,
                "bbox_x": x,
                "bbox_y": y,
                "bbox_w": w,
                "bbox_h": h,
                "object_location": location[3 * cells.row0 + cells.col0],
                "status": "ok",
            }
        )
        described.append({**base, "description": description, "status": "ok"})
    storage.write_table(tables.PAIRS, source, shard, table_from_records(pairs, tables.PAIRS.schema))
    storage.write_table(tables.DESCRIPTIONS, source, shard, table_from_records(described, tables.DESCRIPTIONS.schema))
    return [row["pair_id"] for row in pairs]


def test_a_contradicting_rewrite_falls_back_through_the_stage_and_shows_in_the_catalog(tmp_path, checker):
    from pbi_ml.catalog import build_catalog
    from pbi_ml.config import SourceConfig
    from pbi_ml.stages.instructions import instructions_config_id, run_instructions

    storage = Storage(tmp_path)
    source = SourceConfig(name="gen", format="coco", images=str(tmp_path), annotations=str(tmp_path / "a.json"))
    ids = _write_partition(storage, "gen", "000")
    config = InstructConfig(batch_size=2)
    result = run_instructions(storage, source, "000", config, checker=checker)
    rows = {r["pair_id"]: r for r in result.table.to_pylist()}
    checks = [rows[i]["instruction_check"] for i in ids]
    assert checks == [CONTRADICTS_LOCATION, "passed", "passed", CONTRADICTS_LOCATION, "passed"]
    for pair_id, (description, _) in zip(ids, PAIRS, strict=True):
        row = rows[pair_id]
        assert description in row["instruction_vlm_llm_raw"], "the template writer keeps the description's words"
        if row["instruction_check"] == CONTRADICTS_LOCATION:  # falls back to the class template, raw kept
            assert row["instruction_vlm_llm"] == row["instruction_class"] == "add a dog"
            assert row["instruction_check_similarity"] > 0.35
        else:
            assert row["instruction_vlm_llm"] == row["instruction_vlm_llm_raw"]
    assert result.counts["check_contradicts_location"] == 2 and result.counts["check_passed"] == 3

    build_catalog(storage)
    con = duckdb.connect(str(storage.catalog_path), read_only=True)
    try:
        query = f"SELECT count(*) FROM {tables.PAIRS.name} WHERE instruction_check = '{CONTRADICTS_LOCATION}'"
        assert con.execute(query).fetchone() == (2,)
    finally:
        con.close()

    # turned off: the config id of before the spatial check, and every rewrite passes
    off = dataclasses.replace(config, spatial_check=False)
    assert instructions_config_id(off) != instructions_config_id(config)
    assert "spatial" in instructions_config_id(config) and "spatial" not in instructions_config_id(off)
    again = run_instructions(storage, source, "000", off, checker=checker)
    assert again.counts["items_computed_this_run"] == len(ids)
    assert {r["instruction_check"] for r in again.table.to_pylist()} == {"passed"}


def test_the_spatial_check_keeps_the_config_ids_it_does_not_change():
    """Stored instructions are redone only where the spatial check may change them: turning it off,
    or turning the whole check off, gives the ids the configs had before it existed."""
    from pbi_ml.stages.common import fingerprint
    from pbi_ml.stages.instructions import instructions_config_id

    unchecked = InstructConfig(check=False)
    assert instructions_config_id(unchecked) == instructions_config_id(
        dataclasses.replace(unchecked, spatial_check=False)
    )
    assert instructions_config_id(unchecked) == fingerprint(
        unchecked, exclude=("batch_size", "device", "spatial_check")
    )
    checked = InstructConfig()
    assert instructions_config_id(checked).endswith("-check-2-spatial-1")
    assert instructions_config_id(dataclasses.replace(checked, spatial_check=False)).endswith("-check-2")

"""The bundled demo source: a small, valid COCO instances dataset of real photos."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from pbi_ml.sources import demo

# COCO 2017's own ids for the classes the demo uses (instances_*.json "categories").
COCO_IDS = {"person": 1, "motorcycle": 4, "cat": 17, "bottle": 44, "cup": 47, "spoon": 50}


@pytest.fixture(scope="module")
def data():
    with open(demo.annotations_path(), encoding="utf-8") as f:
        return json.load(f)


def _area_and_box(segmentation, height, width):
    rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    return float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


def test_paths_live_inside_the_package():
    assert demo.images_dir().is_dir()
    assert demo.annotations_path().is_file()
    assert demo.images_dir().parent == demo.annotations_path().parent
    assert (demo.annotations_path().parent / "SOURCE.md").is_file()


def test_pycocotools_loads_it():
    coco = COCO(str(demo.annotations_path()))
    assert len(coco.getImgIds()) >= 5
    assert len(coco.getAnnIds()) >= 12
    # every annotation decodes to a non-empty mask of its image's size
    for ann in coco.loadAnns(coco.getAnnIds()):
        image = coco.loadImgs(ann["image_id"])[0]
        m = coco.annToMask(ann)
        assert m.shape == (image["height"], image["width"])
        assert m.sum() > 0


def test_images_exist_and_decode_to_declared_size(data):
    images = data["images"]
    assert len(images) >= 5
    assert len({im["id"] for im in images}) == len(images)
    assert len({im["file_name"] for im in images}) == len(images)
    for im in images:
        path = demo.images_dir() / im["file_name"]
        assert path.is_file(), path
        with Image.open(path) as pil:
            assert pil.format == "JPEG"
            pixels = np.asarray(pil.convert("RGB"))
        assert pixels.shape == (im["height"], im["width"], 3)
        assert max(im["width"], im["height"]) <= 512
        assert pixels.std() > 20, f"{path} looks blank, not a photo"


def test_polygons_are_valid_inside_their_image_and_exact(data):
    images = {im["id"]: im for im in data["images"]}
    ids = [a["id"] for a in data["annotations"]]
    assert len(set(ids)) == len(ids)
    for ann in data["annotations"]:
        im = images[ann["image_id"]]
        w, h = im["width"], im["height"]
        seg = ann["segmentation"]
        assert isinstance(seg, list) and seg, "polygons, not RLE"
        for poly in seg:
            assert len(poly) % 2 == 0 and len(poly) >= 6, "a polygon needs >= 3 points"
            xs, ys = np.array(poly[0::2]), np.array(poly[1::2])
            assert xs.min() >= 0 and xs.max() <= w and ys.min() >= 0 and ys.max() <= h
        assert ann["iscrowd"] == 0
        area, bbox = _area_and_box(seg, h, w)
        assert ann["area"] == pytest.approx(area, abs=1e-6)
        assert ann["bbox"] == pytest.approx(bbox, abs=1e-6)


def test_several_images_hold_several_instances(data):
    per_image = Counter(a["image_id"] for a in data["annotations"])
    assert sum(1 for n in per_image.values() if n >= 2) >= 4
    assert set(per_image) == {im["id"] for im in data["images"]}, "every photo is annotated"


def test_categories_are_real_and_unique(data):
    cats = data["categories"]
    ids = [c["id"] for c in cats]
    names = [c["name"] for c in cats]
    assert len(set(ids)) == len(ids) and len(set(names)) == len(names)
    for c in cats:
        assert c["name"] and c["name"] == c["name"].strip().lower()
        assert c["supercategory"]
        if c["name"] in COCO_IDS:
            assert c["id"] == COCO_IDS[c["name"]], f"{c['name']} must keep its COCO id"
        else:
            assert c["id"] >= 1000, f"{c['name']} is not a COCO class: id must be >= 1000"
    used = {a["category_id"] for a in data["annotations"]}
    assert used == set(ids), "no unused categories, no undeclared ones"
    assert {"person", "cat", "cup", "motorcycle"} <= set(names)


def test_enough_instances_pass_the_default_filters_and_some_do_not(data):
    images = {im["id"]: im for im in data["images"]}
    fractions = [
        a["area"] / (images[a["image_id"]]["width"] * images[a["image_id"]]["height"]) for a in data["annotations"]
    ]
    in_range = [f for f in fractions if 0.005 <= f <= 0.5]
    assert len(in_range) >= 8
    assert any(f < 0.005 for f in fractions), "one tiny object shows the too_small rejection"
    assert any(f > 0.5 for f in fractions), "one huge object shows the too_large rejection"

    # the default border filter (bbox within 0.5 % of a side) must leave enough to make pairs
    def clear_of_border(ann):
        im = images[ann["image_id"]]
        x, y, w, h = ann["bbox"]
        mx, my = 0.005 * im["width"], 0.005 * im["height"]
        return x >= mx and y >= my and x + w <= im["width"] - mx and y + h <= im["height"] - my

    kept = [a for a, f in zip(data["annotations"], fractions, strict=True) if 0.005 <= f <= 0.5 and clear_of_border(a)]
    assert len(kept) >= 8
    assert len({a["image_id"] for a in kept}) >= 4

"""The inpainting quality benchmark's metrics and cases (benchmarks/inpaint_quality.py)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("skimage")

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "inpaint_quality.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("inpaint_quality", BENCHMARK)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def photo_and_hole():
    import skimage.data

    image = np.ascontiguousarray(skimage.data.astronaut()[:128, :128])
    hole = np.zeros(image.shape[:2], bool)
    hole[40:80, 50:90] = True
    return image, hole


def test_identity_inpainting_is_exact(bench, photo_and_hole):
    image, hole = photo_and_hole
    l1, psnr, ssim = bench.masked_metrics(image, image.copy(), hole)
    assert l1 == 0.0
    assert math.isinf(psnr) and psnr > 0
    assert ssim == pytest.approx(1.0)


def test_a_known_perturbation_inside_the_hole_gives_its_l1_and_psnr(bench, photo_and_hole):
    image, hole = photo_and_hole
    image = np.clip(image, 10, 245).astype(np.uint8)  # room for +-10 without clipping
    out = image.astype(np.int16)
    out[hole] += np.where(np.arange(hole.sum() * 3).reshape(-1, 3) % 2 == 0, 10, -10).astype(np.int16)
    out[~hole] = 0  # outside the hole does not count
    l1, psnr, ssim = bench.masked_metrics(image, out.astype(np.uint8), hole)
    assert l1 == pytest.approx(10.0)
    assert psnr == pytest.approx(10 * math.log10(255**2 / 100))
    assert ssim < 1.0


def test_annotated_holes_sit_on_background_of_another_photo(bench, tmp_path):
    """Holes from real annotation shapes land where the target photo has no annotated object."""
    import cv2

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    images = []
    for i in range(3):
        cv2.imwrite(str(tmp_path / "images" / f"{i}.png"), rng.integers(0, 255, (120, 160, 3), dtype=np.uint8))
        images.append({"id": i, "file_name": f"{i}.png", "height": 120, "width": 160})
    boxes = {0: [10, 10, 30, 20], 1: [100, 60, 40, 40], 2: [0, 0, 60, 60]}
    annotations = [
        {
            "id": i + 1,
            "image_id": i,
            "bbox": box,
            "iscrowd": 0,
            "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0], box[1] + box[3]]],
        }
        for i, box in boxes.items()
    ]
    (tmp_path / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": []})
    )
    cases = bench.annotated_cases(tmp_path, count=10, dilation_px=2)
    assert cases
    for case in cases:
        target = int(case.name.split("->")[1].split(".")[0])
        source = int(case.name.split("->")[0].removeprefix("ann")) - 1
        assert target != source
        x, y, w, h = boxes[target]
        assert not case.hole[y : y + h, x : x + w].any()


def test_every_available_method_fills_the_hole_and_only_it(bench):
    """On a flat grey photo with a black hole, each method restores the grey; the xphoto methods
    are listed as unavailable exactly when cv2 lacks xphoto (opencv-python-headless)."""
    import cv2

    original = np.full((48, 64, 3), 128, np.uint8)
    hole = np.zeros(original.shape[:2], bool)
    hole[16:32, 20:40] = True
    damaged = original.copy()
    damaged[hole] = 0
    table = bench.methods()
    for name in bench.XPHOTO_METHODS:
        assert (table[name][0] is None) == (not hasattr(cv2, "xphoto")), name
    for name, (inpaint, _) in table.items():
        if inpaint is None:
            continue
        out = inpaint(damaged, hole)
        assert np.array_equal(out[~hole], original[~hole]), name
        l1, _, _ = bench.masked_metrics(original, out, hole)
        assert l1 < 3, (name, l1)


def test_the_diffusers_backend_gets_a_row_on_the_whole_photo(bench, tmp_path):
    """--sd-model's row: the removal backend fills the hole (a tiny random pipeline here, so only the
    path is checked, not the quality) and the table compares it with the reference."""
    from pbi_ml.tiny_sd import save_tiny_inpaint_pipeline

    model = save_tiny_inpaint_pipeline(tmp_path / "sd")
    cases = bench.skimage_cases(1, dilation_px=15)
    table = {
        "telea r=3": bench.methods()["telea r=3"],
        bench.SD_METHOD: (bench.sd_inpainter(str(model), "cpu", resolution=64, steps=2, min_context_px=64), "tiny"),
    }
    results = bench.run(cases, table, time_cap=60)
    assert [len(rows) for rows in results.values()] == [1, 1]
    l1, psnr, ssim, seconds = results[bench.SD_METHOD][0][1:]
    assert l1 > 0 and np.isfinite(psnr) and -1 <= ssim <= 1 and seconds > 0
    assert "| sd | 1 |" in bench.results_table(results, table, len(cases))

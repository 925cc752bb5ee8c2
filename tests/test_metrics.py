"""Evaluation metrics (MagicBrush protocol) on real photos, with tiny models saved to disk and
loaded back by path, and with the default hub ids offline."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pbi_ml.evaluate.metrics import (
    DinoEmbedder,
    MetricsConfig,
    cmmd,
    compute_metrics,
    pixel_metrics,
)


def _small(image, size=(64, 64)):
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def photos():
    return [_small(skimage.data.chelsea()), _small(skimage.data.coffee()), _small(skimage.data.astronaut())]


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from tiny_clip import save_tiny_clip, save_tiny_dino

    root = tmp_path_factory.mktemp("tiny-metric-models")
    clip_config, clip_weights = save_tiny_clip(root / "clip", name="pbi-tiny-clip-metrics")
    dino_dir = save_tiny_dino(root / "dino")
    return MetricsConfig(
        clip_model=clip_config,
        clip_pretrained=clip_weights,
        dino_model=dino_dir,
        cmmd_clip_model=clip_config,
        cmmd_clip_pretrained=clip_weights,
        device="cpu",
        batch_size=2,
    )


def test_pixel_metrics_exact():
    gt = np.zeros((2, 3, 3), np.uint8)
    out = np.full((2, 3, 3), 51, np.uint8)  # 0.2 everywhere
    m = pixel_metrics(out, gt)
    assert m["l1"] == pytest.approx(0.2)
    assert m["l2"] == pytest.approx(0.04)
    half = gt.copy()
    half[0] = 255  # half the pixels off by 1
    m = pixel_metrics(half, gt)
    assert m == {"l1": pytest.approx(0.5), "l2": pytest.approx(0.5)}


def test_pixel_metrics_resize_the_output_to_the_ground_truth():
    # a constant output of another size: resizing keeps it constant, so the numbers are exact
    out = np.full((8, 12, 3), 102, np.uint8)  # 0.4
    gt = np.full((4, 6, 3), 51, np.uint8)  # 0.2
    assert pixel_metrics(out, gt) == {"l1": pytest.approx(0.2), "l2": pytest.approx(0.04)}
    # a real photo: the output is brought to the ground truth's size (PIL bicubic), not the reverse
    photo = skimage.data.astronaut()
    gt = _small(skimage.data.coffee(), (40, 30))
    resized = np.asarray(Image.fromarray(photo).resize((40, 30), Image.Resampling.BICUBIC)).astype(np.float64) / 255
    expected = np.abs(resized - gt / 255.0).mean()
    assert pixel_metrics(photo, gt)["l1"] == pytest.approx(expected, rel=1e-12)
    assert pixel_metrics(photo, photo)["l1"] == 0.0


def test_cmmd_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8))
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-9)
    assert cmmd(x, x[::-1]) == pytest.approx(0.0, abs=1e-9)  # a set: order does not matter
    assert cmmd(x, x + 3.0) > 1.0
    # one point each, distance a: 1000 * (1 + 1 - 2 exp(-a^2 / (2 * 10^2)))
    a = 4.0
    assert cmmd(np.zeros((1, 2)), np.array([[a, 0.0]])) == pytest.approx(1000 * (2 - 2 * np.exp(-(a**2) / 200)))


def test_model_metrics_through_tiny_models(photos, tiny_models):
    rows, summary = compute_metrics(photos, photos, ["a photo of a cat", None, "an astronaut"], tiny_models)
    assert len(rows) == 3 and summary["n"] == 3
    for row in rows:
        assert row["l1"] == 0.0 and row["l2"] == 0.0
        assert row["clip_i"] == pytest.approx(1.0, abs=1e-5)  # an image with itself
        assert row["dino"] == pytest.approx(1.0, abs=1e-5)
    assert np.isfinite(rows[0]["clip_t"]) and np.isfinite(rows[2]["clip_t"])
    assert rows[1]["clip_t"] is None and rows[1]["null_reason"] == "clip_t: no caption"
    assert rows[0]["null_reason"] is None
    assert summary["clip_t"] == pytest.approx((rows[0]["clip_t"] + rows[2]["clip_t"]) / 2)
    assert summary["cmmd"] == pytest.approx(0.0, abs=1e-6) and summary["cmmd_null_reason"] is None
    for metric in ("l1", "l2", "clip_i", "clip_t", "dino", "cmmd"):
        assert summary[metric] is not None and summary[f"{metric}_null_reason"] is None

    # different images: below 1 for the embeddings, above 0 for CMMD
    rows, summary = compute_metrics(photos, photos[1:] + photos[:1], [None] * 3, tiny_models)
    assert all(r["clip_i"] < 1 - 1e-4 and r["dino"] < 1 - 1e-4 and r["l1"] > 0.01 for r in rows)
    assert summary["cmmd"] == pytest.approx(0.0, abs=1e-6)  # the same set, permuted
    _, summary = compute_metrics(photos[:2], [255 - p for p in photos[:2]], [None] * 2, tiny_models)
    assert summary["cmmd"] > 1e-3
    assert summary["clip_t"] is None and summary["clip_t_null_reason"] == "no caption"


def test_dino_preprocessing_is_resize_256_centre_crop_224():
    embedder = DinoEmbedder("unused")
    wide = skimage.data.coffee()  # 400 x 600
    x = embedder.preprocess(wide)
    assert tuple(x.shape) == (3, 224, 224)
    # resize shortest side to 256 -> 256 x 384, centre crop 224 -> columns 80..304, rows 16..240
    resized = np.asarray(Image.fromarray(wide).resize((384, 256), Image.Resampling.BICUBIC), np.float32) / 255
    expected = (resized[16:240, 80:304] - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(x.numpy().transpose(1, 2, 0), expected, atol=1e-5)


def test_offline_defaults_give_null_model_metrics_with_reasons(photos):
    rows, summary = compute_metrics(photos[:2], photos[:2], ["a cat", "a cup"], MetricsConfig(device="cpu"))
    assert all(r["l1"] == 0.0 and r["l2"] == 0.0 for r in rows)
    assert summary["l1"] == 0.0 and summary["l2_null_reason"] is None
    for row in rows:
        assert row["clip_i"] is None and row["clip_t"] is None and row["dino"] is None
        assert "ViT-B-32" in row["null_reason"] and "facebook/dino-vits16" in row["null_reason"]
    for metric, model in (
        ("clip_i", "ViT-B-32"),
        ("clip_t", "ViT-B-32"),
        ("dino", "dino-vits16"),
        ("cmmd", "ViT-L-14-336"),
    ):
        assert summary[metric] is None
        assert model in summary[f"{metric}_null_reason"] and "could not be loaded" in summary[f"{metric}_null_reason"]

    _, summary = compute_metrics(photos[:1], photos[:1], [None], MetricsConfig(enabled=False))
    assert summary["l1"] == 0.0 and summary["dino"] is None and "disabled" in summary["dino_null_reason"]

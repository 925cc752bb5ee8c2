"""Evaluation metrics (MagicBrush protocol, google-research CMMD) on real photos, with tiny models
saved to disk and loaded back by path, and with the default hub ids offline; the QuickGELU rule of
every CLIP model PBI builds; the MagicBrush "add" subset and captions reader."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import skimage.data
from PIL import Image

from pbi_ml.evaluate.metrics import (
    NO_CAPTION,
    DinoEmbedder,
    MetricsConfig,
    cmmd,
    cmmd_indices,
    cmmd_square,
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
    from tests.support.tiny_clip import save_tiny_clip, save_tiny_dino

    root = tmp_path_factory.mktemp("tiny-metric-models")
    clip_config, clip_weights = save_tiny_clip(root / "clip", name="pbi-tiny-clip-metrics")
    dino_dir = save_tiny_dino(root / "dino")
    return MetricsConfig(
        clip_model=clip_config,
        clip_pretrained=clip_weights,
        dino_model=dino_dir,
        cmmd_clip_model=clip_config,
        cmmd_clip_pretrained=clip_weights,
        cmmd_batch_size=2,  # the reference's 32 would leave 3 test images without a full batch
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


def _cmmd_float64(x, y, sigma=10.0):
    """An independent float64 reading of the biased MMD^2 estimator, times 1000."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)

    def k(a, b):
        return np.exp(-((a[:, None, :] - b[None, :, :]) ** 2).sum(-1) / (2 * sigma**2)).mean()

    return 1000 * (k(x, x) + k(y, y) - 2 * k(x, y))


def test_cmmd_formula():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 8)).astype(np.float32)
    assert cmmd(x, x) == pytest.approx(0.0, abs=1e-3)  # float32, like the reference: rounding only
    assert cmmd(x, x[::-1]) == pytest.approx(0.0, abs=1e-3)  # a set: order does not matter
    assert cmmd(x, x + 3.0) > 1.0
    # one point each, distance a: 1000 * (1 + 1 - 2 exp(-a^2 / (2 * 10^2)))
    a = 4.0
    assert cmmd(np.zeros((1, 2)), np.array([[a, 0.0]])) == pytest.approx(
        1000 * (2 - 2 * np.exp(-(a**2) / 200)), rel=1e-5
    )
    # L2-normalised embeddings, as CMMD's: the float32 reference formula matches a float64 one
    e = rng.normal(size=(40, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    f = rng.normal(size=(40, 16))
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    assert cmmd(e, f) == pytest.approx(_cmmd_float64(e, f), rel=1e-3, abs=1e-3)


def test_cmmd_uses_the_first_full_batches_in_sorted_file_order():
    # google-research/cmmd: sorted file names, batches of 32 with drop_remainder=True
    names = [f"{i}-1.png" for i in range(144)]
    used = cmmd_indices(names, 32)
    assert len(used) == 128  # 144 MagicBrush-add images -> 128 embedded
    assert [names[i] for i in used] == sorted(names)[:128]
    assert "99-1.png" not in [names[i] for i in used]  # "99-1" sorts after "143-1": string order, as glob + sort
    assert cmmd_indices(names[:31], 32) == []
    assert cmmd_indices(["b", "c", "a"], 2) == [2, 0]


def test_cmmd_preprocessing_is_centre_square_crop_then_bicubic_resize():
    wide = skimage.data.coffee()  # 400 x 600: square of 400 at columns 100..500
    out = cmmd_square(wide, 64)
    expected = np.asarray(Image.fromarray(wide[:, 100:500]).resize((64, 64), Image.Resampling.BICUBIC))
    assert out.shape == (64, 64, 3) and np.array_equal(out, expected)
    odd = np.zeros((5, 8, 3), np.uint8)
    odd[:, 1:6] = 255  # (8 - 5) // 2 = 1: columns 1..5 kept
    assert np.array_equal(cmmd_square(odd, 5), np.full((5, 5, 3), 255, np.uint8))


def test_model_metrics_through_tiny_models(photos, tiny_models):
    rows, summary = compute_metrics(photos, photos, ["a photo of a cat", None, "an astronaut"], tiny_models)
    assert len(rows) == 3 and summary["n"] == 3
    for row in rows:
        assert row["l1"] == 0.0 and row["l2"] == 0.0
        assert row["clip_i"] == pytest.approx(1.0, abs=1e-5)  # an image with itself
        assert row["dino"] == pytest.approx(1.0, abs=1e-5)
        assert row["clip_t_instruction"] is None  # no instructions given
    assert np.isfinite(rows[0]["clip_t"]) and np.isfinite(rows[2]["clip_t"])
    assert rows[1]["clip_t"] is None
    assert rows[1]["null_reason"] == f"clip_t: {NO_CAPTION}; clip_t_instruction: no instruction"
    assert rows[0]["null_reason"] == "clip_t_instruction: no instruction"
    assert summary["clip_t"] == pytest.approx((rows[0]["clip_t"] + rows[2]["clip_t"]) / 2)
    # identical sets: CMMD 0 up to float32 rounding, on the first full batch (2 of 3) and on all
    assert summary["cmmd"] == pytest.approx(0.0, abs=1e-3) and summary["cmmd_null_reason"] is None
    assert summary["cmmd_n"] == 2 and summary["cmmd_all"] == pytest.approx(0.0, abs=1e-3)
    for metric in ("l1", "l2", "clip_i", "clip_t", "dino", "cmmd", "cmmd_all"):
        assert summary[metric] is not None and summary[f"{metric}_null_reason"] is None

    # different images: below 1 for the embeddings, above 0 for CMMD
    rows, summary = compute_metrics(photos, photos[1:] + photos[:1], [None] * 3, tiny_models)
    assert all(r["clip_i"] < 1 - 1e-4 and r["dino"] < 1 - 1e-4 and r["l1"] > 0.01 for r in rows)
    assert summary["cmmd_all"] == pytest.approx(0.0, abs=1e-3)  # the same set, permuted
    _, summary = compute_metrics(photos[:2], [255 - p for p in photos[:2]], [None] * 2, tiny_models)
    assert summary["cmmd"] > 1e-3
    assert summary["clip_t"] is None and summary["clip_t_null_reason"] == NO_CAPTION


def test_clip_t_scores_the_target_caption_and_clip_t_instruction_the_instruction(photos, tiny_models):
    from pbi_ml.clip_embedder import ClipEmbedder

    outputs, targets = photos, photos[::-1]
    captions = ["a cat sitting on a rug with a red ball", None, "an astronaut holding a flag"]
    instructions = ["add a red ball", "put a spoon in the cup", "add a flag"]
    rows, summary = compute_metrics(outputs, targets, captions, tiny_models, instructions=instructions)

    clip = ClipEmbedder(tiny_models.clip_model, tiny_models.clip_pretrained, device="cpu")
    out_emb = clip.embed_images(outputs)
    for i in (0, 2):
        expected = float(np.dot(out_emb[i], clip.embed_texts([captions[i]])[0]))
        assert rows[i]["clip_t"] == pytest.approx(expected, abs=1e-5)
    for i in range(3):
        expected = float(np.dot(out_emb[i], clip.embed_texts([instructions[i]])[0]))
        assert rows[i]["clip_t_instruction"] == pytest.approx(expected, abs=1e-5)
    assert rows[0]["clip_t"] != pytest.approx(rows[0]["clip_t_instruction"], abs=1e-4)  # two different texts
    assert rows[1]["clip_t"] is None and rows[1]["null_reason"] == f"clip_t: {NO_CAPTION}"
    assert summary["clip_t"] == pytest.approx((rows[0]["clip_t"] + rows[2]["clip_t"]) / 2)
    assert summary["clip_t_instruction"] == pytest.approx(np.mean([r["clip_t_instruction"] for r in rows]))

    # without any caption (PIPE test): clip_t null with the reason, the instruction score kept apart
    _, summary = compute_metrics(outputs, targets, [None] * 3, tiny_models, instructions=instructions)
    assert summary["clip_t"] is None and summary["clip_t_null_reason"] == NO_CAPTION
    assert summary["clip_t_instruction"] is not None and summary["clip_t_instruction_null_reason"] is None


def test_cmmd_is_the_reference_number_on_full_batches_in_file_order(photos, tiny_models):
    from pbi_ml.clip_embedder import ClipEmbedder

    outputs = [photos[0], photos[1], photos[2], 255 - photos[0], 255 - photos[1]]
    targets = [photos[1], photos[2], photos[0], photos[0], 255 - photos[2]]
    names = ["e.png", "b.png", "d.png", "a.png", "c.png"]  # sorted: a b c d (e is the remainder)
    _, summary = compute_metrics(outputs, targets, [None] * 5, tiny_models, sort_keys=names)
    assert summary["cmmd_n"] == 4

    clip = ClipEmbedder(tiny_models.cmmd_clip_model, tiny_models.cmmd_clip_pretrained, device="cpu", precision="fp32")
    size = clip.image_size
    out_emb = clip.embed_images([cmmd_square(o, size) for o in outputs])
    gt_emb = clip.embed_images([cmmd_square(t, size) for t in targets])
    used = [3, 1, 4, 2]
    assert summary["cmmd"] == pytest.approx(cmmd(gt_emb[used], out_emb[used]), rel=1e-4, abs=1e-5)
    assert summary["cmmd_all"] == pytest.approx(cmmd(gt_emb, out_emb), rel=1e-4, abs=1e-5)
    assert summary["cmmd"] != pytest.approx(summary["cmmd_all"], rel=1e-3)

    # fewer images than one batch: the reference has nothing to embed; cmmd_all still reported
    config = MetricsConfig(**{**tiny_models.__dict__, "cmmd_batch_size": 32})
    _, summary = compute_metrics(outputs, targets, [None] * 5, config, sort_keys=names)
    assert summary["cmmd"] is None and summary["cmmd_n"] == 0
    assert "fewer than one batch of 32" in summary["cmmd_null_reason"] and summary["cmmd_all"] is not None


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
    rows, summary = compute_metrics(
        photos[:2], photos[:2], ["a cat", "a cup"], MetricsConfig(device="cpu"), instructions=["add a cat", "add a cup"]
    )
    assert all(r["l1"] == 0.0 and r["l2"] == 0.0 for r in rows)
    assert summary["l1"] == 0.0 and summary["l2_null_reason"] is None
    for row in rows:
        assert row["clip_i"] is None and row["clip_t"] is None and row["dino"] is None
        assert "ViT-B-32" in row["null_reason"] and "facebook/dino-vits16" in row["null_reason"]
    for metric, model in (
        ("clip_i", "ViT-B-32"),
        ("clip_t_instruction", "ViT-B-32"),
        ("dino", "dino-vits16"),
        ("cmmd", "ViT-L-14-336"),
        ("cmmd_all", "ViT-L-14-336"),
    ):
        assert summary[metric] is None
        assert model in summary[f"{metric}_null_reason"] and "could not be loaded" in summary[f"{metric}_null_reason"]

    _, summary = compute_metrics(photos[:1], photos[:1], [None], MetricsConfig(enabled=False))
    assert summary["l1"] == 0.0 and summary["dino"] is None and "disabled" in summary["dino_null_reason"]


# --------------------------------------------------------------------------------------------
# QuickGELU: every CLIP model is built with the activation its pretrained tag was trained with


@pytest.fixture(scope="module")
def tiny_tagged(tmp_path_factory):
    """A tiny config without a quick_gelu key (like open_clip's "ViT-B-32") and one that forces it."""
    from tests.support.tiny_clip import save_tiny_clip

    root = tmp_path_factory.mktemp("tiny-tagged")
    plain = save_tiny_clip(root / "plain", name="pbi-tiny-clip-plain-act")
    forced = save_tiny_clip(root / "forced", name="pbi-tiny-clip-forced-quickgelu", quick_gelu=True)
    return plain, forced


def test_the_default_clip_models_are_openai_tags_trained_with_quick_gelu():
    import open_clip

    from pbi_ml.clip_embedder import tag_quick_gelu
    from pbi_ml.config import ScoringConfig
    from pbi_ml.stages.evaluation import EvaluationConfig

    metrics, evaluation, scoring = MetricsConfig(), EvaluationConfig(), ScoringConfig()
    for model, tag in (
        (metrics.clip_model, metrics.clip_pretrained),
        (metrics.cmmd_clip_model, metrics.cmmd_clip_pretrained),
        (evaluation.clip_model, evaluation.clip_pretrained),
        (evaluation.cmmd_clip_model, evaluation.cmmd_clip_pretrained),
        (scoring.clip_model, scoring.clip_pretrained),
    ):
        assert model in ("ViT-B-32", "ViT-L-14", "ViT-L-14-336") and tag == "openai"
        assert tag_quick_gelu(model, tag) is True
        assert not (open_clip.get_model_config(model) or {}).get("quick_gelu")  # open_clip's plain config: GELU
    assert tag_quick_gelu("ViT-L-14", "laion2b_s32b_b82k") is False
    assert tag_quick_gelu("ViT-B-32", None) is None and tag_quick_gelu("ViT-B-32", "/some/file.pt") is None


def test_real_openai_names_are_built_with_force_quick_gelu(monkeypatch):
    """Without downloading anything: the kwargs open_clip receives for the real names."""
    import open_clip

    from pbi_ml.clip_embedder import create_open_clip

    seen = []

    class Stop(Exception):
        pass

    def spy(name, **kwargs):
        seen.append((name, kwargs["pretrained"], kwargs["force_quick_gelu"]))
        raise Stop

    monkeypatch.setattr(open_clip, "create_model_and_transforms", spy)
    for name, tag, quick in (
        ("ViT-B-32", "openai", True),
        ("ViT-L-14", "openai", True),
        ("ViT-L-14-336", "openai", True),
        ("ViT-L-14-quickgelu", "openai", False),  # the config already has QuickGELU
        ("ViT-L-14", "laion2b_s32b_b82k", False),  # trained with GELU
    ):
        with pytest.raises(Stop):
            create_open_clip(name, tag, "cpu", "fp32")
        assert seen[-1] == (name, tag, quick)


def test_every_clip_model_follows_its_tags_activation(monkeypatch, tiny_tagged, photos):
    import pbi_ml.clip_embedder as clip_embedder
    from pbi_ml.clip_embedder import ClipEmbedder
    from pbi_ml.config import ScoringConfig
    from pbi_ml.scoring.clip import cached_embedder
    from tests.support.tiny_clip import mlp_activations, register_tiny_tag

    (config, weights), _ = tiny_tagged
    register_tiny_tag(monkeypatch, config, "fake_openai", weights, quick_gelu=True)
    register_tiny_tag(monkeypatch, config, "fake_laion", weights, quick_gelu=False)
    built = []
    real = clip_embedder.create_open_clip

    def recording(model_name, pretrained, device, precision):
        model, preprocess, tokenizer = real(model_name, pretrained, device, precision)
        built.append((pretrained, mlp_activations(model)))
        return model, preprocess, tokenizer

    monkeypatch.setattr(clip_embedder, "create_open_clip", recording)

    # the embedder itself
    assert mlp_activations(ClipEmbedder(config, "fake_openai", device="cpu").model) == {"QuickGELU"}
    assert mlp_activations(ClipEmbedder(config, "fake_laion", device="cpu").model) == {"GELU"}
    assert mlp_activations(ClipEmbedder(config, weights, device="cpu").model) == {"GELU"}  # a file: the config's
    # evaluation: CLIP-I / CLIP-T and CMMD
    built.clear()
    metrics = MetricsConfig(
        clip_model=config,
        clip_pretrained="fake_openai",
        cmmd_clip_model=config,
        cmmd_clip_pretrained="fake_laion",
        dino_model="/nonexistent-dino",
        cmmd_batch_size=1,
        device="cpu",
    )
    _, summary = compute_metrics(photos[:1], photos[:1], ["a cat"], metrics)
    assert summary["clip_i"] is not None and summary["cmmd"] is not None
    assert built == [("fake_openai", {"QuickGELU"}), ("fake_laion", {"GELU"})]
    # filter scores
    built.clear()
    scoring = ScoringConfig(backend="clip", clip_model=config, clip_pretrained="fake_openai", device="cpu")
    embedder = cached_embedder(scoring.clip_model, scoring.clip_pretrained, scoring.device, scoring.batch_size)
    assert built == [("fake_openai", {"QuickGELU"})] and mlp_activations(embedder.model) == {"QuickGELU"}


def test_an_activation_mismatch_is_an_error_not_a_warning(monkeypatch, tiny_tagged, photos):
    import logging
    import warnings

    import open_clip

    from pbi_ml.clip_embedder import ActivationMismatchError, ClipEmbedder, create_open_clip
    from pbi_ml.scoring.clip import cached_embedder
    from tests.support.tiny_clip import register_tiny_tag

    _, (forced, weights) = tiny_tagged
    register_tiny_tag(monkeypatch, forced, "fake_laion", weights, quick_gelu=False)
    # a QuickGELU config on weights trained with GELU cannot be repaired by a flag
    with pytest.raises(ActivationMismatchError, match="trained with GELU"):
        ClipEmbedder(forced, "fake_laion", device="cpu").load()
    with pytest.raises(ActivationMismatchError):  # never a null metric with a reason
        compute_metrics(photos[:1], photos[:1], [None], MetricsConfig(clip_model=forced, clip_pretrained="fake_laion"))
    with pytest.raises(Exception, match="trained with GELU"):
        cached_embedder(forced, "fake_laion", "cpu", 4)

    # should open_clip still report a mismatch (a warning, or a log record), the build fails
    def warns(*args, **kwargs):
        warnings.warn("QuickGELU mismatch between final model config (quick_gelu=False) and tag 'x'", stacklevel=2)
        raise AssertionError("not reached: the warning is an error")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", warns)
    with pytest.raises(ActivationMismatchError, match="QuickGELU mismatch"):
        create_open_clip(forced, weights, "cpu", "fp32")

    class Model:
        def eval(self):
            return self

    def logs(*args, **kwargs):
        logging.warning("These pretrained weights were trained with QuickGELU activation but the model config does not")
        return Model(), None, None

    monkeypatch.setattr(open_clip, "create_model_and_transforms", logs)
    with pytest.raises(ActivationMismatchError, match="trained with QuickGELU"):
        create_open_clip(forced, weights, "cpu", "fp32")


# --------------------------------------------------------------------------------------------
# the MagicBrush "add" subset and its captions


def test_magicbrush_add_rule_reads_contains_as_substrings():
    from pbi_ml.errors import ConfigError
    from pbi_ml.stages.evaluation import EvaluationConfig, is_magicbrush_add

    cases = [
        # (instruction, substring reading (the default), whole-word reading)
        ("Add a dog on the grass", True, True),
        ("put a hat on him", True, True),
        ("PUT a lamp on the desk", True, True),  # any case
        ("Adding a boat to the lake", True, False),  # "add" inside a word
        ("have him put on glasses", True, True),
        ("let there be a ladder against the wall", True, False),  # "add" in "ladder"
        ("place a computer on the desk", True, False),  # "put" in "computer"
        ("add a cat and a dog", False, False),  # two edits
        ("add a ring on her hand", False, True),  # "and" in "hand"
        ("put a man standing by the car", False, True),  # "and" in "standing"
        ("remove the car", False, False),
        ("add a tree where the removed car was", False, True),  # "remove" in "removed"
        ("make the sky blue", False, False),
        ("make the sand whiter", False, False),
        ("", False, False),
    ]
    for instruction, substring, word in cases:
        assert is_magicbrush_add(instruction) is substring, instruction
        assert is_magicbrush_add(instruction, "substring") is substring, instruction
        assert is_magicbrush_add(instruction, "word") is word, instruction
    with pytest.raises(ConfigError, match="magicbrush_add_rule"):
        EvaluationConfig(magicbrush_add_rule="words")


def _png(seed):
    import io

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def test_magicbrush_reader_takes_every_turn_and_the_local_captions(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pbi_ml.stages.evaluation import EvaluationConfig, magicbrush_samples

    turns = [  # (img_id, turn_index, instruction): HF MagicBrush layout, one row per turn
        ("30", 1, "add a red kite in the sky"),  # a session's first turn counts too, not only its last
        ("30", 2, "make the kite blue"),
        ("139", 1, "remove the bench"),
        ("139", 2, "put a cat on the grass"),
        ("139", 3, "adding a ladder to the wall"),  # substring reading only
        ("200", 1, "add a ring on her hand"),  # whole-word reading only
    ]
    image = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table(
        {
            "img_id": [t[0] for t in turns],
            "turn_index": pa.array([t[1] for t in turns], pa.int32()),
            "source_img": pa.array([_png(i) for i in range(len(turns))], image),
            "mask_img": pa.array([_png(10 + i) for i in range(len(turns))], image),
            "instruction": [t[2] for t in turns],
            "target_img": pa.array([_png(20 + i) for i in range(len(turns))], image),
        }
    )
    parquet = tmp_path / "test.parquet"
    pq.write_table(table, parquet)
    captions = {  # MagicBrush's local_captions.json: {img_id: {"<img_id>-output<k>.png": caption}}
        "30": {"30-output1.png": "a beach with a red kite in the sky", "30-output2.png": "a blue kite"},
        "139": {"139-output2.png": "a cat on the grass in a park"},
    }
    captions_path = tmp_path / "local_captions.json"
    captions_path.write_text(json.dumps(captions))

    counts = {}
    config = EvaluationConfig(magicbrush_parquet=str(parquet), magicbrush_captions=str(captions_path))
    samples = magicbrush_samples(str(parquet), config, counts)
    assert [(s["sample_id"], s["caption"]) for s in samples] == [
        ("30-1", "a beach with a red kite in the sky"),
        ("139-2", "a cat on the grass in a park"),
        ("139-3", None),  # no caption for that turn: clip_t null for it
    ]
    assert samples[1]["instruction"] == "put a cat on the grass" and samples[1]["target"]["bytes"] == _png(23)["bytes"]
    assert counts == {"magicbrush_turns": 6, "magicbrush_add_substring": 3, "magicbrush_add_word": 3}

    word = magicbrush_samples(str(parquet), EvaluationConfig(magicbrush_add_rule="word"))
    assert [s["sample_id"] for s in word] == ["30-1", "139-2", "200-1"] and all(s["caption"] is None for s in word)


def test_evaluation_tables_have_the_reference_metric_columns():
    from pbi_ml.stages.evaluation import METRICS
    from pbi_ml.tables import EVALUATION_SAMPLES, EVALUATIONS

    EVALUATION_SCHEMA, SAMPLE_SCHEMA = EVALUATIONS.schema, EVALUATION_SAMPLES.schema

    assert set(METRICS) == {"l1", "l2", "clip_i", "clip_t", "clip_t_instruction", "dino", "cmmd", "cmmd_all"}
    for m in METRICS:
        assert EVALUATION_SCHEMA.field(m).type == "double"
        assert EVALUATION_SCHEMA.field(f"{m}_null_reason").type == "string"
    assert EVALUATION_SCHEMA.field("cmmd_n").type == "int64"
    for column in ("caption", "clip_t", "clip_t_instruction", "null_reason"):
        assert column in SAMPLE_SCHEMA.names

"""Filter scores on real photos: the stats backend, decisions, and the clip backend through a tiny
open_clip model saved to disk and loaded back by path."""

import dataclasses
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import cv2
import numpy as np
import pytest
import skimage.data

from pbi_ml.config import ScoringConfig
from pbi_ml.errors import ConfigError, ItemError
from pbi_ml.masks import dilate
from pbi_ml.scoring import (
    CLIP_COLUMNS,
    SCORE_COLUMNS,
    SCORE_FIELDS,
    STATS_BACKEND_CLIP_REASON,
    STATS_COLUMNS,
    ObjectToScore,
    decide,
    score_objects,
)
from pbi_ml.scoring.clip import embedding_spread

STATS = ScoringConfig(backend="stats")


def _ellipse(shape, centre, axes) -> np.ndarray:
    mask = np.zeros(shape[:2], np.uint8)
    cv2.ellipse(mask, centre, axes, 0, 0, 360, 1, -1)
    return mask > 0


@pytest.fixture(scope="module")
def cat_eye():
    """chelsea's left eye: a real object on fur, its mask, and the removal dilation."""
    image = skimage.data.chelsea()
    mask = _ellipse(image.shape, (172, 113), (40, 32))
    return image, mask, dilate(mask, 15)


def _telea(image, dilated, radius=3):
    return cv2.inpaint(image, dilated.astype(np.uint8), radius, cv2.INPAINT_TELEA)


def _ns(image, dilated, radius=5):
    return cv2.inpaint(image, dilated.astype(np.uint8), radius, cv2.INPAINT_NS)


def _painted_red(image, dilated):
    out = image.copy()
    out[dilated] = (255, 0, 0)
    return out


def test_score_columns_match_fields():
    assert SCORE_COLUMNS == [f.name for f in SCORE_FIELDS]
    assert SCORE_COLUMNS[-1] == "clip_null_reason"


def test_unchanged_candidate_has_zero_change_and_is_rejected_as_edit_too_small(cat_eye):
    image, mask, dilated = cat_eye
    obj = ObjectToScore(image, mask, dilated, [image.copy(), _telea(image, dilated)], "eye")
    rows = score_objects([obj], STATS)[0]
    assert rows[0]["stats_change"] == 0.0
    assert rows[1]["stats_change"] > 0.1  # the eye was really painted over
    decided = decide(rows, STATS)
    assert "edit_too_small" in decided[0]["reject_reason"].split("+")
    assert not decided[0]["passed"] and not decided[0]["chosen"]


def test_telea_removal_passes_and_red_paint_stands_out(cat_eye):
    image, mask, dilated = cat_eye
    # three classical removals that roughly agree: they pass consensus and boundary contrast (the
    # texture filter is off here: classical fills over fur are smooth, see the texture-ratio test)
    removals = [_telea(image, dilated, 3), _ns(image, dilated, 5), _telea(image, dilated, 9)]
    no_texture = dataclasses.replace(STATS, stats_min_texture_ratio=0.0)
    rows = decide(score_objects([ObjectToScore(image, mask, dilated, removals, "eye")], STATS)[0], no_texture)
    assert rows[0]["stats_consensus_std"] < STATS.stats_max_consensus_std
    assert all(r["passed"] and r["reject_reason"] is None for r in rows)
    assert sum(r["chosen"] for r in rows) == 1

    # a candidate with the region painted bright red stands out from the fur around it
    red = _painted_red(image, dilated)
    telea_row, red_row = score_objects([ObjectToScore(image, mask, dilated, [removals[0], red], "eye")], STATS)[0]
    assert telea_row["stats_boundary_contrast"] < STATS.stats_max_boundary_contrast < red_row["stats_boundary_contrast"]
    assert red_row["stats_boundary_contrast"] > 3 * telea_row["stats_boundary_contrast"]
    decided = decide([telea_row, red_row], STATS)
    assert "boundary_mismatch" in decided[1]["reject_reason"].split("+")
    assert "boundary_mismatch" not in (decided[0]["reject_reason"] or "")


def test_identical_candidates_have_zero_consensus_std():
    image = skimage.data.coffee()
    mask = _ellipse(image.shape, (366, 283), (44, 46))  # the spoon's bowl
    dilated = dilate(mask, 15)
    removal = _telea(image, dilated)
    rows = score_objects([ObjectToScore(image, mask, dilated, [removal.copy() for _ in range(3)], "spoon")], STATS)[0]
    assert [r["stats_consensus_std"] for r in rows] == [0.0, 0.0, 0.0]
    # and disagreeing candidates do not
    rows = score_objects(
        [ObjectToScore(image, mask, dilated, [removal, _painted_red(image, dilated)], "spoon")], STATS
    )[0]
    assert rows[0]["stats_consensus_std"] > STATS.stats_max_consensus_std


def test_stats_backend_leaves_clip_columns_null_with_reason(cat_eye):
    image, mask, dilated = cat_eye
    rows = score_objects([ObjectToScore(image, mask, dilated, [_telea(image, dilated)], "eye")], STATS)[0]
    assert set(rows[0]) == set(SCORE_COLUMNS)
    assert all(rows[0][c] is None for c in CLIP_COLUMNS)
    assert rows[0]["clip_null_reason"] == STATS_BACKEND_CLIP_REASON
    assert rows[0]["stats_consensus_std"] is None  # one candidate: disagreement is undefined


def test_bad_inputs(cat_eye):
    image, mask, dilated = cat_eye
    with pytest.raises(ConfigError):
        score_objects([ObjectToScore(image, mask, dilated, [image], "eye")], ScoringConfig(backend="magic"))
    with pytest.raises(ItemError) as err:
        score_objects([ObjectToScore(image, mask, dilated, [image[:100]], "eye")], STATS)
    assert err.value.reason == "removal_size_mismatch"
    with pytest.raises(ItemError) as err:
        score_objects([ObjectToScore(image, np.zeros_like(mask), dilated, [image], "eye")], STATS)
    assert err.value.reason == "empty_mask"


def _stats_row(candidate, contrast, change=0.2, consensus=0.01):
    return {
        "candidate": candidate,
        "stats_consensus_std": consensus,
        "stats_boundary_contrast": contrast,
        "stats_change": change,
    }


def test_decide_chooses_the_lowest_scoring_passing_candidate():
    rows = [
        _stats_row(0, 0.10),
        _stats_row(1, 0.01, change=0.0),  # lowest contrast but removed nothing: rejected
        _stats_row(2, 0.05),
        _stats_row(3, 0.05),  # tie with 2: lower candidate index wins
        _stats_row(4, 0.30),
    ]
    out = decide(rows, STATS)
    assert [r["passed"] for r in out] == [True, False, True, True, False]
    assert [r["chosen"] for r in out] == [False, False, True, False, False]
    assert out[1]["reject_reason"] == "edit_too_small"
    assert out[4]["reject_reason"] == "boundary_mismatch"
    assert rows[0].get("passed") is None  # inputs are not modified

    failing = decide([_stats_row(0, 0.9, change=0.0, consensus=0.5)], STATS)
    assert failing[0]["reject_reason"] == "consensus_disagreement+boundary_mismatch+edit_too_small"
    assert not any(r["chosen"] for r in failing)


def test_decide_clip_thresholds_and_exception():
    config = ScoringConfig(backend="clip")

    def row(candidate, after, before, importance=0.9, consensus=0.1):
        return {
            "candidate": candidate,
            "clip_consensus_std": consensus,
            "clip_removal_sim": after,
            "clip_removal_sim_before": before,
            "clip_importance_sim": importance,
            # stats columns are ignored by the clip backend
            "stats_consensus_std": 1.0,
            "stats_boundary_contrast": 1.0,
            "stats_change": 0.0,
        }

    rows = [
        row(0, 0.30, 0.30),  # still looks like the class, no drop: object still present
        row(1, 0.30, 0.36),  # high, but dropped clearly from a high start: another instance nearby
        row(2, 0.20, 0.30),  # clean removal
        row(3, 0.10, 0.30, importance=0.99),  # edit too small
        row(4, 0.25, 0.30, consensus=0.5),
    ]
    out = decide(rows, config)
    assert [r["reject_reason"] for r in out] == [
        "object_still_present",
        None,
        None,
        "edit_too_small",
        "consensus_disagreement",
    ]
    assert [r["chosen"] for r in out] == [False, False, True, False, False]
    missing = decide([row(0, None, 0.3)], config)
    assert missing[0]["reject_reason"] == "clip_removal_sim_missing"


# ---------------------------------------------------------------------------------------------
# clip backend through a tiny open_clip model on disk


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    from tests.support.tiny_clip import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), name="pbi-tiny-clip-scoring")


def test_clip_embedder_loads_the_checkpoint_and_uses_the_real_clip_tokenizer(tiny_clip, tmp_path):
    from pbi_ml.clip_embedder import ClipEmbedder
    from tests.support.tiny_clip import save_tiny_clip

    config_path, checkpoint = tiny_clip
    embedder = ClipEmbedder(config_path, checkpoint, device="cpu", batch_size=2)
    tokens = embedder.tokenizer(["a photo of a cat"])[0].tolist()
    assert tokens[:8] == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert len(tokens) == 77

    images = [
        np.ascontiguousarray(skimage.data.chelsea()[::4, ::4]),
        np.ascontiguousarray(skimage.data.coffee()[::4, ::4]),
        skimage.data.astronaut()[::8, ::8].copy(),
    ]
    emb = embedder.embed_images(images)  # 3 images in batches of 2
    assert emb.shape == (3, 32) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    text = embedder.embed_texts(["a photo of a cat", "a photo of a dog", "a photo of a cat"])
    np.testing.assert_allclose(text[0], text[2], atol=1e-6)
    assert not np.allclose(text[0], text[1], atol=1e-3)

    # the weights come from the checkpoint: the same file gives the same embeddings, another differs
    again = ClipEmbedder(config_path, checkpoint, device="cpu").embed_images(images[:1])
    np.testing.assert_allclose(again, emb[:1], atol=1e-6)
    _, other_checkpoint = save_tiny_clip(tmp_path, name="pbi-tiny-clip-scoring", seed=1)
    other = ClipEmbedder(config_path, other_checkpoint, device="cpu").embed_images(images[:1])
    assert not np.allclose(other, emb[:1], atol=1e-3)


def test_clip_backend_scores(tiny_clip):
    from pbi_ml.clip_embedder import ClipEmbedder

    config_path, checkpoint = tiny_clip
    config = ScoringConfig(
        backend="clip", clip_model=config_path, clip_pretrained=checkpoint, device="cpu", batch_size=8
    )
    image = np.ascontiguousarray(skimage.data.chelsea()[::2, ::2])
    mask = _ellipse(image.shape, (86, 56), (20, 16))
    dilated = dilate(mask, 6)
    coffee = np.ascontiguousarray(skimage.data.coffee()[::4, ::4])
    coffee_mask = _ellipse(coffee.shape, (91, 71), (11, 11))
    coffee_dilated = dilate(coffee_mask, 4)
    objects = [
        ObjectToScore(
            image, mask, dilated, [image.copy(), _telea(image, dilated), _painted_red(image, dilated)], "cat"
        ),
        ObjectToScore(coffee, coffee_mask, coffee_dilated, [_telea(coffee, coffee_dilated)] * 3, "spoon"),
    ]
    scored = score_objects(objects, config)
    assert [len(rows) for rows in scored] == [3, 3]
    for rows in scored:
        for row in rows:
            assert set(row) == set(SCORE_COLUMNS)
            assert row["clip_null_reason"] is None
            assert all(np.isfinite(row[c]) for c in CLIP_COLUMNS)
            assert row["stats_change"] is not None  # the stats columns come along
        assert len({row["clip_consensus_std"] for row in rows}) == 1  # object-level
        assert len({row["clip_removal_sim_before"] for row in rows}) == 1
    cat = scored[0]
    # the unchanged candidate is, to CLIP, exactly the original
    assert cat[0]["clip_importance_sim"] == pytest.approx(1.0, abs=1e-5)
    assert cat[0]["clip_removal_sim"] == pytest.approx(cat[0]["clip_removal_sim_before"], abs=1e-5)
    assert cat[2]["clip_importance_sim"] < cat[0]["clip_importance_sim"] - 1e-4
    assert cat[0]["clip_consensus_std"] > 1e-3
    assert scored[1][0]["clip_consensus_std"] == pytest.approx(0.0, abs=1e-6)  # identical candidates

    # batched across objects == one object at a time; and the same numbers on a second call
    embedder = ClipEmbedder(config_path, checkpoint, device="cpu", batch_size=3)
    alone = score_objects(objects[:1], config, embedder=embedder)[0]
    for a, b in zip(alone, cat, strict=True):
        for c in CLIP_COLUMNS:
            assert a[c] == pytest.approx(b[c], abs=1e-5)
    assert score_objects(objects, config) == scored

    decided = decide(cat, config)
    assert "edit_too_small" in decided[0]["reject_reason"].split("+")


def test_clip_sees_the_whole_of_an_elongated_object(tiny_clip):
    """A 440x20 ski-like bar, red at one end and blue at the other: the tensor CLIP's own
    preprocessing (resize the shorter side, centre crop) makes of the isolated view holds both
    ends; the unpadded crop (what CLIP was given before) loses them, and the score differs."""
    from PIL import Image

    from pbi_ml.clip_embedder import ClipEmbedder
    from pbi_ml.masks import bbox_of, crop_box, isolate_region
    from pbi_ml.scoring.clip import ISOLATION_CROP_PAD, class_prompt, isolated_region

    image = np.full((480, 640, 3), 128, dtype=np.uint8)
    image[230:250, 100:540] = (40, 160, 40)
    image[230:250, 100:140] = (255, 0, 0)
    image[230:250, 500:540] = (0, 0, 255)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[230:250, 100:540] = True
    view = isolated_region(image, mask, 0, 0.0)
    assert view.shape[0] == view.shape[1], "padded to a square"
    x0, y0, x1, y1 = crop_box(bbox_of(mask), image.shape, pad=ISOLATION_CROP_PAD)
    unpadded = np.ascontiguousarray(isolate_region(image, mask, 0, 0.0)[y0:y1, x0:x1])

    config_path, checkpoint = tiny_clip
    embedder = ClipEmbedder(config_path, checkpoint, device="cpu", batch_size=2)
    preprocess = embedder._loaded()[1]  # the exact transform open_clip feeds the model

    def ends_seen(array: np.ndarray) -> tuple[bool, bool]:
        pixels = preprocess(Image.fromarray(array)).numpy()  # normalised CHW
        red = (pixels[0] > 1.5) & (pixels[1] < -1.0) & (pixels[2] < -1.0)
        blue = (pixels[0] < -1.0) & (pixels[1] < -1.0) & (pixels[2] > 1.5)
        return bool(red.any()), bool(blue.any())

    assert ends_seen(view) == (True, True)
    assert ends_seen(unpadded) == (False, False), "the centre crop of the bare crop cuts both ends off"
    embeddings = embedder.embed_images([view, unpadded])
    text = embedder.embed_texts([class_prompt("ski")])[0]
    assert abs(float(embeddings[0] @ text) - float(embeddings[1] @ text)) > 1e-4


def test_class_names_reach_clip_cleaned():
    from pbi_ml.scoring.clip import class_prompt

    assert class_prompt("bow_(weapon)") == "a photo of a bow"
    assert class_prompt("Human face") == "a photo of a human face"


def test_an_object_removed_in_crop_and_in_full_context_gets_the_same_importance(tiny_clip, tiny_sd_inpaint_dir):
    """`full` also sends the pixels outside the mask through the VAE; the pair keeps the original
    there, and so does what is scored: the importance no longer depends on the context."""
    from dataclasses import replace

    from pbi_ml.config import RemovalConfig
    from pbi_ml.removal import make_inpainter
    from pbi_ml.scoring.clip import clip_scores

    config_path, checkpoint = tiny_clip
    config = ScoringConfig(backend="clip", clip_model=config_path, clip_pretrained=checkpoint, device="cpu")
    removal = RemovalConfig(
        backend="diffusers", model=str(tiny_sd_inpaint_dir), steps=2, resolution=64, num_candidates=2, device="cpu"
    )
    image = cv2.resize(skimage.data.chelsea(), (160, 120), interpolation=cv2.INTER_AREA)
    mask = _ellipse(image.shape, (64, 44), (14, 12))
    dilated = dilate(mask, removal.dilation_px)
    importance, raw_importance = {}, {}
    for context in ("crop", "full"):
        inpainter = make_inpainter(replace(removal, context=context))
        assert inpainter.context_of(image, dilated) == context
        obj = ObjectToScore(image, mask, dilated, inpainter.inpaint([image], [dilated], ["cat"])[0], "cat")
        importance[context] = [row["clip_importance_sim"] for row in score_objects([obj], config)[0]]
        raw_importance[context] = [row["clip_importance_sim"] for row in clip_scores([obj], config)[0]]
    assert importance["crop"] == raw_importance["crop"]  # crop already keeps the original outside the mask
    for crop, full, raw_full in zip(importance["crop"], importance["full"], raw_importance["full"], strict=True):
        assert full == pytest.approx(crop, abs=0.005)
        assert raw_full < crop - 0.03  # the whole-image VAE drift the pair does not contain


def test_embedding_spread_matches_its_definition():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(3, 16))
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    assert embedding_spread(e) == pytest.approx(np.sqrt(np.var(e, axis=0).sum()), abs=1e-6)
    # for unit vectors: sqrt((K-1)/K * (1 - mean pairwise cosine))
    cos = (e @ e.T)[np.triu_indices(3, 1)].mean()
    assert embedding_spread(e) == pytest.approx(np.sqrt(2 / 3 * (1 - cos)), abs=1e-6)
    assert embedding_spread(e[:1]) is None


def test_clip_backend_without_weights_fails_loudly(cat_eye):
    image, mask, dilated = cat_eye
    config = ScoringConfig(backend="clip", clip_model="ViT-B-32", clip_pretrained="openai", device="cpu")
    with pytest.raises(ConfigError, match="could not load open_clip model 'ViT-B-32'"):
        score_objects([ObjectToScore(image, mask, dilated, [image], "eye")], config)


def test_texture_ratio_flags_a_smooth_smear_in_textured_surroundings():
    """A flat grey fill of a region in a textured photo scores far below a fill that keeps texture."""
    import skimage.data

    from pbi_ml.config import ScoringConfig
    from pbi_ml.masks import dilate
    from pbi_ml.scoring import ObjectToScore, decide, score_objects

    photo = skimage.data.astronaut()[::4, ::4].copy()  # 128 x 128, textured
    mask = np.zeros(photo.shape[:2], bool)
    mask[40:80, 40:80] = True
    dilated = dilate(mask, 4)
    smear = photo.copy()
    smear[dilated] = photo[dilated].mean(axis=0).astype(np.uint8)  # a flat, background-mean fill
    textured = photo.copy()
    textured[dilated] = np.roll(photo, 60, axis=1)[dilated]  # texture from elsewhere in the photo
    rows = score_objects([ObjectToScore(photo, mask, dilated, [smear, textured], "thing")], ScoringConfig())[0]
    assert rows[0]["stats_texture_ratio"] < 0.1 < 0.5 < rows[1]["stats_texture_ratio"]
    decided = decide(rows, ScoringConfig(stats_max_consensus_std=1.0))
    assert "smeared_fill" in decided[0]["reject_reason"]
    assert decided[1]["passed"] and decided[1]["chosen"]


def test_hole_radius_is_half_the_width_of_the_hole_not_its_length():
    from pbi_ml.masks import hole_radius_px

    disc = _ellipse((400, 400), (200, 200), (60, 60))
    assert hole_radius_px(disc) == pytest.approx(61, abs=1.5)
    bar = np.zeros((400, 400), bool)
    bar[100:120, 20:380] = True  # 20 px wide, 360 px long
    assert hole_radius_px(bar) == pytest.approx(10, abs=1)
    # the image border is not an edge the inpainter fills from: a bar along it is as wide as twice itself
    edge_bar = np.zeros((400, 400), bool)
    edge_bar[:20, :] = True
    assert hole_radius_px(edge_bar) == pytest.approx(20, abs=1)


def test_decide_rejects_a_hole_too_wide_for_the_method_and_nothing_else():
    config = ScoringConfig(telea_max_hole_radius_px=40.0, ns_max_hole_radius_px=30.0)
    unscored = dict.fromkeys(SCORE_COLUMNS)
    rows = [
        {**_stats_row(0, 0.05), "method": "telea r=3", "hole_radius_px": 35.0},  # within telea's limit
        {**unscored, "candidate": 1, "method": "ns r=5", "hole_radius_px": 35.0},  # beyond ns's
        {**_stats_row(2, 0.01), "method": "sd seed=2", "hole_radius_px": 500.0},  # sd: no limit
    ]
    out = decide(rows, config)
    assert [r["reject_reason"] for r in out] == [None, "hole_too_large_for_inpainter", None]
    assert [r["chosen"] for r in out] == [False, False, True]
    no_limit = dataclasses.replace(config, ns_max_hole_radius_px=None)
    assert decide(rows[1:2], no_limit)[0]["reject_reason"] == "stats_boundary_contrast_missing+stats_change_missing"


def test_score_stage_sets_aside_holes_wider_than_the_inpainter_fills(tmp_path):
    """On the demo's real photos: with a 40 px limit, every object whose dilated mask is wider gets
    the reason and no scores; every narrower one is scored and decided exactly as without a limit."""
    from pbi_ml.config import CandidateConfig, ClassFilterConfig, RemovalConfig, SourceIndexConfig
    from pbi_ml.config.project import demo_source
    from pbi_ml.stages.candidates import run_candidates
    from pbi_ml.stages.class_scores import run_class_scores
    from pbi_ml.stages.removals import run_removals
    from pbi_ml.stages.scores import run_scores
    from pbi_ml.stages.source_index import run_source_index
    from pbi_ml.storage import Storage

    storage, source = Storage(tmp_path), demo_source()
    run_source_index(storage, source, "000", SourceIndexConfig(num_shards=1))
    run_candidates(storage, source, "000", CandidateConfig())
    run_class_scores(storage, source, "000", ClassFilterConfig())
    run_removals(storage, source, "000", RemovalConfig())
    unlimited = run_scores(
        storage, source, "000", ScoringConfig(telea_max_hole_radius_px=None, ns_max_hole_radius_px=None)
    )
    limited = run_scores(
        storage, source, "000", ScoringConfig(telea_max_hole_radius_px=40.0, ns_max_hole_radius_px=40.0)
    )
    before = {(r["annotation_id"], r["candidate"]): r for r in unlimited.table.to_pylist()}
    after = limited.table.to_pylist()
    wide = [r for r in after if r["hole_radius_px"] > 40]
    narrow = [r for r in after if r["hole_radius_px"] <= 40]
    assert wide and narrow, "the demo has objects on both sides of 40 px"
    for row in wide:
        assert row["reject_reason"] == "hole_too_large_for_inpainter" and not row["passed"] and not row["chosen"]
        assert all(row[name] is None for name in STATS_COLUMNS)
        assert before[(row["annotation_id"], row["candidate"])]["stats_change"] is not None
    for row in narrow:
        old = before[(row["annotation_id"], row["candidate"])]
        assert {k: row[k] for k in (*STATS_COLUMNS, "passed", "reject_reason", "chosen")} == {
            k: old[k] for k in (*STATS_COLUMNS, "passed", "reject_reason", "chosen")
        }
    assert any(r["chosen"] for r in narrow)
    assert limited.counts["rejected_hole_too_large_for_inpainter"] == len(wide)

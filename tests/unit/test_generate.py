"""Generating edits with a trained (tiny) InstructPix2Pix pipeline: sizes, determinism, batching."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from pbi_ml.errors import ConfigError
from pbi_ml.evaluate.generate import GenerateConfig, generate_edits, working_size
from pbi_ml.train import TrainConfig, TrainingExample, train_instruct_pix2pix


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> str:
    """A tiny pipeline trained for 2 steps by the real training code on real photos."""
    root = tmp_path_factory.mktemp("gen")
    examples = []
    for k, name in enumerate(["chelsea", "coffee", "astronaut"]):
        target = cv2.resize(getattr(skdata, name)(), (64, 64), interpolation=cv2.INTER_AREA)
        mask = np.zeros((64, 64), np.uint8)
        mask[16:40, 20:44] = 255
        Image.fromarray(cv2.inpaint(target, mask, 3, cv2.INPAINT_TELEA)).save(root / f"s{k}.png")
        Image.fromarray(target).save(root / f"t{k}.png")
        examples.append(
            TrainingExample(str(root / f"s{k}.png"), str(root / f"t{k}.png"), (f"add a {name}",), "center", f"p{k}")
        )
    config = TrainConfig(
        init_model="tiny",
        resolution=32,
        train_batch_size=3,
        gradient_accumulation_steps=1,
        max_steps=2,
        checkpoint_every=2,
    )
    return train_instruct_pix2pix(examples, config, root / "run").pipeline_dir


def _photos():
    return [
        cv2.resize(skdata.chelsea(), (48, 40), interpolation=cv2.INTER_AREA),
        cv2.resize(skdata.coffee(), (48, 40), interpolation=cv2.INTER_AREA),
        cv2.resize(skdata.astronaut(), (32, 32), interpolation=cv2.INTER_AREA),
    ]


INSTRUCTIONS = ["add a cat", "add a cup at the top left", "add a hat"]
FAST = GenerateConfig(num_inference_steps=2, batch_size=4)


@pytest.fixture(scope="module")
def batched(pipeline_dir):
    return generate_edits(pipeline_dir, _photos(), INSTRUCTIONS, FAST)


def test_outputs_have_the_working_size_and_are_deterministic(pipeline_dir, batched):
    photos = _photos()
    first = batched
    assert [o.shape for o in first] == [(40, 48, 3), (40, 48, 3), (32, 32, 3)]
    assert all(o.dtype == np.uint8 for o in first)
    assert all(o.std() > 0 for o in first), "a decoded image, not a constant"
    second = generate_edits(pipeline_dir, photos, INSTRUCTIONS, FAST)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    other_seed = generate_edits(
        pipeline_dir, photos[:1], INSTRUCTIONS[:1], GenerateConfig(num_inference_steps=2, seed=1)
    )
    assert not np.array_equal(other_seed[0], first[0])


def test_results_do_not_depend_on_batching(pipeline_dir, batched):
    photos = _photos()
    one_by_one = generate_edits(pipeline_dir, photos, INSTRUCTIONS, GenerateConfig(num_inference_steps=2, batch_size=1))
    alone = generate_edits(pipeline_dir, photos[1:2], INSTRUCTIONS[1:2], FAST)
    for a, b in zip(batched, one_by_one, strict=True):
        assert np.abs(a.astype(int) - b).max() <= 1
    assert np.abs(alone[0].astype(int) - batched[1]).max() <= 1


def test_resolution_sets_the_longer_side(pipeline_dir):
    photos = _photos()[1:]
    out = generate_edits(pipeline_dir, photos, INSTRUCTIONS[1:], GenerateConfig(num_inference_steps=1, resolution=64))
    # tiny model: VAE x2 and UNet x2 downsampling -> sides are multiples of 4
    assert [o.shape for o in out] == [(52, 64, 3), (64, 64, 3)]


def test_working_size_rounding_for_sd15():
    assert working_size(480, 640, 512, 64) == (384, 512)  # COCO photo at MagicBrush's 512
    assert working_size(512, 512, 512, 64) == (512, 512)
    assert working_size(500, 333, None, 64) == (512, 320)
    assert working_size(10, 10, None, 64) == (64, 64)


def test_bad_inputs_are_refused(pipeline_dir):
    with pytest.raises(ValueError, match="2 images but 1 instructions"):
        generate_edits(pipeline_dir, _photos()[:2], INSTRUCTIONS[:1], FAST)
    with pytest.raises(ValueError, match=r"images\[0\]"):
        generate_edits(pipeline_dir, [np.zeros((8, 8, 3), np.float32)], ["add a cat"], FAST)
    with pytest.raises(ConfigError):
        GenerateConfig(scheduler="plms")
    assert generate_edits(pipeline_dir, [], [], FAST) == []
    assert Path(pipeline_dir).name == "pipeline"

"""Descriptions: item validation, the object-only view, the pixel describer, the VLM code path."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import json

import numpy as np
import pytest
import skimage.data

from pbi_ml.describe import PAPER_PROMPT, DescribeConfig, DescribeItem, make_describer, masked_object_view
from pbi_ml.describe.pixels import COLOUR_NAMES, colour_name_indices, pixel_attributes
from pbi_ml.errors import ConfigError, ItemError


def ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1


def box(shape, y0, y1, x0, x1):
    mask = np.zeros(shape[:2], bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_config_defaults_are_the_papers_prompt_and_safe():
    config = DescribeConfig()
    assert config.backend == "pixels"
    assert config.trust_remote_code is False
    assert (
        config.prompt
        == "Accurately describe the main characteristics of the {category}. Use few words which best describe the {category}"
    )
    assert PAPER_PROMPT.format(category="cat").endswith("best describe the cat")
    with pytest.raises(ConfigError):
        DescribeConfig(backend="cogvlm")


def test_item_validation_fails_single_items_with_reasons():
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ItemError) as e:
        DescribeItem(image, np.zeros((8, 8), bool), "cat")
    assert e.value.reason == "empty_mask"
    with pytest.raises(ItemError) as e:
        DescribeItem(image, np.ones((8, 9), bool), "cat")
    assert e.value.reason == "mask_size_mismatch"
    with pytest.raises(ItemError) as e:
        DescribeItem(np.zeros((8, 8), np.uint8), np.ones((8, 8), bool), "cat")
    assert e.value.reason == "bad_image"
    item = DescribeItem(image, np.ones((8, 8), np.uint8), "cat")
    assert item.mask.dtype == bool


def test_masked_object_view_shows_only_the_object():
    image = skimage.data.chelsea()
    mask = ellipse(image.shape, 150, 200, 60, 80)
    view = masked_object_view(image, mask, pad=0.1)
    ys, xs = np.nonzero(mask)
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    assert abs(view.shape[0] - 1.2 * h) <= 2 and abs(view.shape[1] - 1.2 * w) <= 2
    y0, x0 = int(np.floor(ys.min() - 0.1 * h)), int(np.floor(xs.min() - 0.1 * w))
    crop_mask = mask[y0 : y0 + view.shape[0], x0 : x0 + view.shape[1]]
    assert (view[~crop_mask] == 128).all()  # outside the object: neutral grey
    assert (view[crop_mask] == image[y0 : y0 + view.shape[0], x0 : x0 + view.shape[1]][crop_mask]).all()


@pytest.mark.parametrize(
    "rgb,name",
    [
        ((0, 0, 0), "black"),
        ((255, 255, 255), "white"),
        ((128, 128, 128), "grey"),
        ((220, 20, 20), "red"),
        ((255, 140, 0), "orange"),
        ((250, 220, 30), "yellow"),
        ((30, 160, 40), "green"),
        ((30, 60, 200), "blue"),
        ((120, 40, 160), "purple"),
        ((255, 160, 200), "pink"),
        ((120, 70, 30), "brown"),
        ((230, 210, 170), "beige"),
    ],
)
def test_colour_names(rgb, name):
    assert COLOUR_NAMES[colour_name_indices(np.array([rgb], np.uint8))[0]] == name


def test_pixel_description_measures_colour_size_shape_texture():
    describer = make_describer(DescribeConfig())
    assert describer.name == "pixels"
    photo = np.full((64, 64, 3), 240, np.uint8)
    photo[8:56, 20:36] = (200, 30, 30)  # a flat red tall object
    two_tone = np.full((64, 64, 3), 240, np.uint8)
    two_tone[24:40, 10:38] = (30, 60, 200)  # 16 x 44 px: wide, mostly blue, partly white
    two_tone[24:40, 38:54] = (255, 255, 255)
    small = np.zeros((200, 200, 3), np.uint8)
    small[:] = (30, 160, 40)
    items = [
        DescribeItem(photo, box(photo.shape, 8, 56, 20, 36), "bottle"),
        DescribeItem(two_tone, box(two_tone.shape, 24, 40, 10, 54), "umbrella"),
        DescribeItem(small, box(small.shape, 10, 30, 10, 30), "apple"),
        DescribeItem(photo, box(photo.shape, 8, 56, 20, 36), "scissors"),
        DescribeItem(photo, box(photo.shape, 8, 56, 20, 36), "bow_(weapon)"),
    ]
    texts = describer.describe(items)
    assert texts[0] == "a medium-sized tall plain red bottle"
    assert texts[1] == "a medium-sized wide plain blue and white umbrella"
    assert texts[2] == "a small plain green apple"
    assert texts[3] == "a pair of medium-sized tall plain red scissors"
    assert texts[4].endswith("red bow")
    assert describer.describe(items) == texts  # deterministic


def test_pixel_description_of_a_real_photo():
    cat = skimage.data.chelsea()
    mask = ellipse(cat.shape, 200, 230, 120, 150)
    attrs = pixel_attributes(cat, mask)
    assert attrs["size"] == "large" and attrs["colours"][0] == "brown"
    text = make_describer(DescribeConfig()).describe([DescribeItem(cat, mask, "cat")])[0]
    assert text.startswith("a large") and text.endswith("brown cat")
    # texture is measured on the object rescaled to a fixed size: sky is plain, gravel textured
    rocket = skimage.data.rocket()
    assert pixel_attributes(rocket, box(rocket.shape, 0, 100, 0, 150))["texture"] == "plain"
    gravel = np.stack([skimage.data.gravel()] * 3, -1)
    assert pixel_attributes(gravel, box(gravel.shape, 0, 200, 0, 200))["texture"] == "textured"


def test_vlm_refuses_remote_code_models_unless_flag_set(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"model_type": "cogvlm", "auto_map": {"AutoModelForCausalLM": "modeling_cogvlm.CogVLMForCausalLM"}})
    )
    with pytest.raises(ConfigError, match="trust_remote_code"):
        make_describer(DescribeConfig(backend="vlm", model=str(tmp_path)))
    with pytest.raises(ConfigError, match="trust_remote_code"):
        make_describer(DescribeConfig(backend="vlm", model="THUDM/cogvlm-chat-hf"))


def test_vlm_describer_code_path_with_tiny_qwen2_vl(tiny_vlm_dir):
    cat = skimage.data.chelsea()[::4, ::4].copy()
    cup = skimage.data.coffee()[::8, ::8].copy()
    items = [
        DescribeItem(cat, box(cat.shape, 20, 60, 30, 90), "cat"),
        DescribeItem(cup, box(cup.shape, 10, 40, 20, 50), "cup"),
        DescribeItem(cat, ellipse(cat.shape, 40, 50, 6, 5), "mouse"),  # 11x13 px: upscaled for the processor
    ]
    describer = make_describer(
        DescribeConfig(backend="vlm", model=str(tiny_vlm_dir), batch_size=2, max_new_tokens=6, device="cpu")
    )
    assert describer.name == "vlm"
    assert describer.tokenizer.padding_side == "left"
    texts = describer.describe(items)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert any(texts)  # random tokens, but something was generated and decoded
    assert describer.describe(items) == texts  # greedy: deterministic
    assert describer.describe(items[1:2]) == texts[1:2]  # left padding: batch-independent
    # the prompt is the paper's, with the class name
    assert describer.prompt_for("bow_(weapon)") == PAPER_PROMPT.format(category="bow")

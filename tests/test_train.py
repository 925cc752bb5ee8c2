"""Training the InstructPix2Pix model: the tiny CPU recipe end to end, determinism, resuming,
conv_in widening, conditioning dropout and the data pipeline, on real photos."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import dataclasses
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from pbi_ml.errors import ConfigError
from pbi_ml.train import TrainConfig, TrainingExample, train_instruct_pix2pix
from pbi_ml.train.data import PairDataset, epoch_batches, sample_conditioning_dropout

PHOTOS = [("chelsea", "cat"), ("coffee", "cup"), ("astronaut", "helmet"), ("chelsea", "cat"), ("coffee", "cup")]
SIZES = [(64, 64), (64, 48), (64, 64), (48, 64), (64, 64)]  # (width, height)
INPAINT_BOX = (slice(12, 36), slice(14, 40))  # rows, cols of the removed "object"


def make_examples(root: Path) -> list[TrainingExample]:
    """Source = the photo with a region inpainted away (cv2), target = the photo itself."""
    root.mkdir(parents=True, exist_ok=True)
    examples = []
    for k, ((name, noun), size) in enumerate(zip(PHOTOS, SIZES, strict=True)):
        target = cv2.resize(getattr(skdata, name)(), size, interpolation=cv2.INTER_AREA)
        mask = np.zeros(target.shape[:2], np.uint8)
        mask[INPAINT_BOX] = 255
        source = cv2.inpaint(target, mask, 3, cv2.INPAINT_TELEA)
        Image.fromarray(source).save(root / f"source_{k}.png")
        Image.fromarray(target).save(root / f"target_{k}.png")
        examples.append(
            TrainingExample(
                source_image=str(root / f"source_{k}.png"),
                target_image=str(root / f"target_{k}.png"),
                instructions=(f"add a {noun}", f"add a small {noun} with soft light"),
                object_location="top left",
                key=f"demo/{k:03d}",
            )
        )
    return examples


SMOKE = TrainConfig(
    init_model="tiny", resolution=32, train_batch_size=2, gradient_accumulation_steps=1, max_steps=4, checkpoint_every=2
)


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
    return make_examples(tmp_path_factory.mktemp("pairs"))


@pytest.fixture(scope="module")
def full_run(examples, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    seen = []
    result = train_instruct_pix2pix(
        examples, SMOKE, out, progress=lambda step, total, loss: seen.append((step, total, loss))
    )
    return out, result, seen


def test_tiny_training_saves_a_loadable_instruct_pix2pix_pipeline(full_run):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    out, result, seen = full_run
    assert result.smoke_model is True
    assert result.steps == 4 and [s for s, _ in result.loss_curve] == [1, 2, 3, 4]
    assert all(math.isfinite(loss) and loss > 0 for _, loss in result.loss_curve)
    assert [s for s, _, _ in seen] == [1, 2, 3, 4] and {t for _, t, _ in seen} == {4}
    assert result.resumed_from_step is None
    # 5 examples, batch 2 -> 3 micro-batches per epoch; 4 steps x accumulation 1
    assert result.epochs_completed == pytest.approx(4 / 3)
    assert result.samples_per_second > 0
    assert [Path(c).name for c in result.checkpoints] == ["step-00000002", "step-00000004"]

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(result.pipeline_dir)
    assert pipe.unet.config.in_channels == 8 and pipe.unet.conv_in.in_channels == 8
    assert isinstance(pipe.scheduler, EulerAncestralDiscreteScheduler)
    assert pipe.safety_checker is None

    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["smoke_model"] is True
    assert json.loads((out / "loss_curve.json").read_text()) == [[s, loss] for s, loss in result.loss_curve]
    assert not list(out.glob(".*")) and not list((out / "checkpoints").glob(".*")), "no temp dirs left behind"


def test_training_actually_changes_the_unet(full_run):
    import torch
    from diffusers import UNet2DConditionModel

    from pbi_ml.train.model import load_model_parts

    _, result, _ = full_run
    trained = UNet2DConditionModel.from_pretrained(result.pipeline_dir, subfolder="unet")
    init = load_model_parts("tiny", seed=SMOKE.seed, tiny_sample_size=16).unet
    diff = max(
        (a - b).abs().max().item()
        for a, b in zip(trained.state_dict().values(), init.state_dict().values(), strict=True)
    )
    assert diff > 0
    # the new image channels of conv_in start at zero and receive gradient
    assert torch.count_nonzero(trained.conv_in.weight[:, 4:]) > 0


@pytest.fixture(scope="module")
def interrupted_run(examples, tmp_path_factory):
    """A second run with the same seed that "dies" right after its step-2 checkpoint."""
    out = tmp_path_factory.mktemp("interrupted")
    return out, train_instruct_pix2pix(examples, dataclasses.replace(SMOKE, max_steps=2), out)


def test_same_seed_same_loss_curve_and_weights(full_run, interrupted_run):
    full_out, full, _ = full_run
    out, second = interrupted_run
    assert second.steps == 2 and second.loss_curve == full.loss_curve[:2]
    step2 = "checkpoints/step-00000002/model.safetensors"
    assert (out / step2).read_bytes() == (full_out / step2).read_bytes()


def test_killed_run_resumes_to_the_uninterrupted_result(examples, full_run, interrupted_run):
    from safetensors.torch import load_file

    full_out, full, _ = full_run
    out, _ = interrupted_run
    (out / "checkpoints" / ".step-00000003.tmp").mkdir()  # a torn save of a killed process is ignored
    resumed = train_instruct_pix2pix(examples, SMOKE, out)
    assert resumed.resumed_from_step == 2 and resumed.steps == 4
    assert resumed.loss_curve == full.loss_curve  # the full curve, not just the resumed part
    assert not (out / "checkpoints" / ".step-00000003.tmp").exists()
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(full_out / "pipeline" / weights), load_file(out / "pipeline" / weights)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)

    # resuming under a changed recipe is refused rather than silently mixing two runs
    with pytest.raises(ConfigError, match="different run"):
        train_instruct_pix2pix(examples, dataclasses.replace(SMOKE, learning_rate=1e-3), out)


def test_conv_in_widening_from_a_local_text2image_pipeline(tmp_path):
    import torch
    from diffusers import UNet2DConditionModel

    from pbi_ml.tiny_sd import save_tiny_text2image_pipeline
    from pbi_ml.train.model import load_model_parts

    sd_dir = save_tiny_text2image_pipeline(tmp_path / "sd15")
    original = UNet2DConditionModel.from_pretrained(str(sd_dir), subfolder="unet").eval()
    parts = load_model_parts(str(sd_dir))
    unet = parts.unet.eval()
    assert parts.smoke_model is False
    assert unet.config.in_channels == 8 and unet.conv_in.weight.shape[1] == 8
    assert torch.equal(unet.conv_in.weight[:, :4], original.conv_in.weight)
    assert torch.equal(unet.conv_in.bias, original.conv_in.bias)
    assert torch.count_nonzero(unet.conv_in.weight[:, 4:]) == 0
    assert not any(p.requires_grad for p in parts.vae.parameters())
    assert not any(p.requires_grad for p in parts.text_encoder.parameters())
    assert all(p.requires_grad for p in unet.parameters())

    # zero-initialised image channels: at step 0 the widened UNet ignores the image latents
    g = torch.Generator().manual_seed(0)
    x, image_latents = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        expected = original(x, 10, text).sample
        got = unet(torch.cat([x, image_latents], dim=1), 10, text).sample
    assert torch.allclose(got, expected, atol=1e-5)


def test_an_instruct_pix2pix_unet_is_not_widened_again(full_run):
    import torch
    from diffusers import UNet2DConditionModel

    from pbi_ml.train.model import load_model_parts

    _, result, _ = full_run
    parts = load_model_parts(result.pipeline_dir)  # e.g. fine-tuning on MagicBrush from our checkpoint
    saved = UNet2DConditionModel.from_pretrained(result.pipeline_dir, subfolder="unet")
    assert parts.unet.config.in_channels == 8
    assert torch.equal(parts.unet.conv_in.weight, saved.conv_in.weight)


def test_an_inpainting_unet_is_refused(tmp_path):
    from pbi_ml.tiny_sd import save_tiny_inpaint_pipeline
    from pbi_ml.train.model import load_model_parts

    with pytest.raises(ConfigError, match="9 input channels"):
        load_model_parts(str(save_tiny_inpaint_pipeline(tmp_path / "inpaint")))


def test_conditioning_dropout_cases_are_disjoint_at_five_percent_each():
    import torch

    u = torch.rand(400_000, generator=torch.Generator().manual_seed(0))
    drop_text, drop_image = sample_conditioning_dropout(u, 0.05, 0.05, 0.05)
    text_only = (drop_text & ~drop_image).float().mean().item()
    image_only = (drop_image & ~drop_text).float().mean().item()
    both = (drop_text & drop_image).float().mean().item()
    for rate in (text_only, image_only, both):
        assert rate == pytest.approx(0.05, abs=0.002)
    assert 1 - text_only - image_only - both == pytest.approx(0.85, abs=0.003)
    # other rates are honoured too (e.g. diffusers' --conditioning_dropout_prob style)
    drop_text, drop_image = sample_conditioning_dropout(u, 0.1, 0.0, 0.02)
    assert (drop_image & ~drop_text).sum().item() == 0
    assert (drop_text & drop_image).float().mean().item() == pytest.approx(0.02, abs=0.002)


def test_samples_are_aligned_crops_and_deterministic(examples):
    dataset = PairDataset(examples, resolution=32, location_prob=0.25, seed=0)
    wide = 1  # 64 x 48 photo: resized to 43 x 32, cropped along x
    source, target, _ = dataset.sample(0, wide)
    assert source.shape == target.shape == (3, 32, 32)
    assert source.min() >= -1 and source.max() <= 1
    # the same crop is cut from both images: away from the inpainted box they are the same photo
    assert np.abs(source - target)[:, 28:, :].mean() < 0.02
    assert np.abs(source - target).max() > 0.1  # ... and the removed region differs
    again = dataset.sample(0, wide)
    assert np.array_equal(again[0], source) and np.array_equal(again[1], target)
    crops = {dataset.sample(epoch, wide)[1].tobytes() for epoch in range(12)}
    assert len(crops) > 1, "random crop positions vary over epochs"

    texts = [dataset.sample(epoch, 0)[2] for epoch in range(400)]
    with_location = [t for t in texts if t.endswith(" at the top left")]
    assert 0.18 < len(with_location) / len(texts) < 0.32  # SPEC: p = 0.25
    assert {t.removesuffix(" at the top left") for t in texts} == set(examples[0].instructions)


def test_epoch_order_covers_every_example_once():
    batches = epoch_batches(5, 2, seed=0, epoch=3)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches == epoch_batches(5, 2, seed=0, epoch=3) != epoch_batches(5, 2, seed=0, epoch=4)
    # two processes: equal shares, together the whole epoch (wrapped round to fill up)
    shares = [epoch_batches(5, 2, seed=0, epoch=3, num_processes=2, process_index=r) for r in (0, 1)]
    assert [len(b) for b in shares[0]] == [len(b) for b in shares[1]]
    assert set(i for s in shares for b in s for i in b) == set(range(5))

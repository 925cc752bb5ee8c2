"""Training the InstructPix2Pix model: the tiny CPU recipe end to end, determinism, resuming (with
EMA too), conv_in widening, conditioning dropout and the data pipeline (crops that keep the object,
location phrases of the crop), on real photos."""

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
from pbi_ml.instruct.spatial import location_contradiction, object_cells
from pbi_ml.masks import object_location
from pbi_ml.train import TrainConfig, TrainingExample, train_instruct_pix2pix
from pbi_ml.train.data import PairDataset, apply_plan, crop_plan, epoch_batches, mask_box, sample_conditioning_dropout
from pbi_ml.train.loop import run_identity

PHOTOS = [("chelsea", "cat"), ("coffee", "cup"), ("astronaut", "helmet"), ("chelsea", "cat"), ("coffee", "cup")]
SIZES = [(64, 64), (64, 48), (64, 64), (48, 64), (64, 64)]  # (width, height)
INPAINT_BOX = (slice(12, 36), slice(14, 40))  # rows, cols of the removed "object"
EDIT_BOX = (slice(10, 38), slice(12, 42))  # its dilated mask: where source and target may differ


def make_examples(root: Path) -> list[TrainingExample]:
    """Source = the photo with a region inpainted away (cv2), target = the photo itself, with the
    object's mask and its dilated edit mask."""
    root.mkdir(parents=True, exist_ok=True)
    examples = []
    for k, ((name, noun), size) in enumerate(zip(PHOTOS, SIZES, strict=True)):
        target = cv2.resize(getattr(skdata, name)(), size, interpolation=cv2.INTER_AREA)
        mask = np.zeros(target.shape[:2], np.uint8)
        mask[INPAINT_BOX] = 255
        edit_mask = np.zeros(target.shape[:2], np.uint8)
        edit_mask[EDIT_BOX] = 255
        source = cv2.inpaint(target, mask, 3, cv2.INPAINT_TELEA)
        Image.fromarray(source).save(root / f"source_{k}.png")
        Image.fromarray(target).save(root / f"target_{k}.png")
        Image.fromarray(mask).save(root / f"mask_{k}.png")
        Image.fromarray(edit_mask).save(root / f"edit_mask_{k}.png")
        examples.append(
            TrainingExample(
                source_image=str(root / f"source_{k}.png"),
                target_image=str(root / f"target_{k}.png"),
                instructions=(f"add a {noun}", f"add a small {noun} with soft light"),
                object_location="top left",  # deliberately not the box's cell: the phrase is measured in the crop
                key=f"demo/{k:03d}",
                mask=str(root / f"mask_{k}.png"),
                edit_mask=str(root / f"edit_mask_{k}.png"),
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


def test_ema_resume_moves_the_ema_to_the_device_after_loading(examples, tmp_path, monkeypatch):
    """accelerate's load_state maps registered objects to the CPU; the EMA must be moved to the
    training device AFTER it (on CUDA the next ema.step would fail otherwise)."""
    from diffusers.training_utils import EMAModel
    from safetensors.torch import load_file

    config = dataclasses.replace(SMOKE, use_ema=True, ema_decay=0.9, max_steps=2, checkpoint_every=1)
    full = train_instruct_pix2pix(examples, config, tmp_path / "full")

    events = []
    real_load, real_to, real_step = EMAModel.load_state_dict, EMAModel.to, EMAModel.step

    def load_state_dict(self, state_dict):
        events.append("load")
        return real_load(self, state_dict)

    def to(self, device=None, dtype=None, **kwargs):
        events.append(f"to:{device}")
        return real_to(self, device=device, dtype=dtype, **kwargs)

    def step(self, parameters):
        parameters = list(parameters)
        events.append(("step", {p.device for p in self.shadow_params}, {p.device for p in parameters}))
        return real_step(self, parameters)

    monkeypatch.setattr(EMAModel, "load_state_dict", load_state_dict)
    monkeypatch.setattr(EMAModel, "to", to)
    monkeypatch.setattr(EMAModel, "step", step)
    out = tmp_path / "resumed"
    train_instruct_pix2pix(examples, dataclasses.replace(config, max_steps=1), out)
    events.clear()
    resumed = train_instruct_pix2pix(examples, config, out)
    assert resumed.resumed_from_step == 1 and resumed.steps == 2
    assert "load" in events
    load_at = events.index("load")
    assert any(isinstance(e, str) and e.startswith("to:") for e in events[load_at + 1 :]), events
    steps = [e for e in events if isinstance(e, tuple)]
    assert len(steps) == 1 and all(shadow == model for _, shadow, model in steps), steps  # training continued
    # the EMA state came back whole: the resumed EMA weights equal the uninterrupted run's
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(Path(full.pipeline_dir) / weights), load_file(out / "pipeline" / weights)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)


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
    assert dataset.crop == "object" == TrainConfig().crop  # the default
    wide = 1  # 64 x 48 photo: resized to 43 x 32, cropped along x
    source, target, _ = dataset.sample(0, wide)
    assert source.shape == target.shape == (3, 32, 32)
    assert source.min() >= -1 and source.max() <= 1
    # the same crop is cut from both images: away from the inpainted box they are the same photo
    assert np.abs(source - target)[:, 28:, :].mean() < 0.02
    assert np.abs(source - target).max() > 0.1  # ... and the removed region differs
    again = dataset.sample(0, wide)
    assert np.array_equal(again[0], source) and np.array_equal(again[1], target)
    for crop in ("object", "random"):
        varied = PairDataset(examples, resolution=32, location_prob=0.25, seed=0, crop=crop)
        crops = {varied.sample(epoch, wide)[1].tobytes() for epoch in range(12)}
        assert len(crops) > 1, f"{crop} crop positions vary over epochs"

    texts = [dataset.sample(epoch, 0)[2] for epoch in range(400)]
    # example 0 is square (no crop slack): its object sits in the centre cell of what the model sees,
    # whatever object_location the example was stored with
    with_location = [t for t in texts if t.endswith(" at the center")]
    assert 0.18 < len(with_location) / len(texts) < 0.32  # docs/method.md#instructions: p = 0.25
    assert {t.removesuffix(" at the center") for t in texts} == set(examples[0].instructions)


def _coco_like_pair(root: Path, box: tuple[slice, slice], name: str, size=(640, 480)) -> TrainingExample:
    """A 4:3 pair (640 x 480, COCO's usual size) with the object in `box` (rows, cols)."""
    w, h = size
    photo = cv2.resize(skdata.astronaut(), (w, h), interpolation=cv2.INTER_AREA)
    mask = np.zeros((h, w), np.uint8)
    mask[box] = 255
    edit = cv2.dilate(mask, np.ones((11, 11), np.uint8))
    source = cv2.inpaint(photo, mask, 3, cv2.INPAINT_TELEA)
    paths = {}
    for kind, array in (("source", source), ("target", photo), ("mask", mask), ("edit", edit)):
        paths[kind] = str(root / f"{name}_{kind}.png")
        Image.fromarray(array).save(paths[kind])
    return TrainingExample(
        paths["source"],
        paths["target"],
        ("add a flag",),
        object_location(mask > 0),
        name,
        mask=paths["mask"],
        edit_mask=paths["edit"],
    )


def _seen_mask(path: str, plan) -> np.ndarray:
    """The mask as the model sees it: resized and cropped like the images (nearest)."""
    from PIL import Image as PILImage

    return np.asarray(apply_plan(PILImage.open(path).convert("L"), plan, PILImage.Resampling.NEAREST)) > 127


def test_object_crops_keep_the_whole_edit_mask(tmp_path):
    # objects near the right edge of a 4:3 photo, where a random 256 crop of the 341-wide resize loses them
    right = _coco_like_pair(tmp_path, (slice(200, 300), slice(560, 620)), "right")
    left = _coco_like_pair(tmp_path, (slice(100, 200), slice(15, 60)), "left")
    tall = _coco_like_pair(tmp_path, (slice(20, 80), slice(100, 200)), "tall", size=(480, 640))  # portrait, top
    wide = _coco_like_pair(tmp_path, (slice(200, 260), slice(20, 620)), "wide")  # wider than any 256 crop
    examples = [right, left, tall, wide]
    obj = PairDataset(examples, resolution=256, location_prob=1.0, seed=0, crop="object")
    rnd = PairDataset(examples, resolution=256, location_prob=1.0, seed=0, crop="random")
    lost_by_random = 0
    for index, example in enumerate(examples):
        with Image.open(example.target_image) as im:
            size = im.size
        offsets = set()
        for epoch in range(30):
            plan, _, _ = obj.plan(epoch, index, size)
            whole = np.asarray(Image.open(example.edit_mask).convert("L").resize(plan.size, Image.Resampling.NEAREST))
            inside = _seen_mask(example.edit_mask, plan)
            assert inside.shape == (256, 256)
            assert inside.sum() == (whole > 127).sum() > 0, f"{example.key} epoch {epoch}: edit mask cut by {plan}"
            offsets.add(plan.box)
            random_plan, _, _ = rnd.plan(epoch, index, size)
            lost_by_random += _seen_mask(example.edit_mask, random_plan).sum() < (whole > 127).sum()
        if example is wide:
            assert offsets == {(0, 0, 256, 256)}  # too wide for a crop: squashed, nothing cut
            assert obj.plan(0, index, size)[0].squashed and obj.plan(0, index, size)[0].size == (256, 256)
        else:
            assert len(offsets) > 1, f"{example.key}: still a random crop among those that keep the mask"
    assert lost_by_random > 0, "the random crop does cut these objects (what the object crop prevents)"

    # squash: the whole image, aspect ratio not kept (diffusers' trainer)
    plan = crop_plan(640, 480, 256, "squash", None, np.random.default_rng(0))
    assert plan.size == (256, 256) and plan.box == (0, 0, 256, 256) and plan.squashed
    # no mask known: "object" falls back to squash
    assert crop_plan(640, 480, 256, "object", None, np.random.default_rng(0)).squashed
    # the box is rounded outwards: a one-pixel object on the last column stays inside
    for seed in range(20):
        plan = crop_plan(640, 480, 256, "object", (639, 0, 640, 1), np.random.default_rng(seed))
        assert plan.box[2] == plan.size[0] == 341
    assert mask_box(np.zeros((4, 4), bool)) is None
    with pytest.raises(ConfigError, match="crop"):
        TrainConfig(crop="centre")


def test_location_phrase_describes_the_object_in_the_crop(tmp_path):
    # object centred at x = 420 of 640: the full photo's centre column (420 / 640 < 2/3), but in a
    # 256 crop of the 341-wide resize it lands in the centre or the right column depending on the crop
    example = _coco_like_pair(tmp_path, (slice(200, 280), slice(400, 440)), "mid")
    assert example.object_location == "center"
    dataset = PairDataset([example], resolution=256, location_prob=1.0, seed=0, crop="object")
    seen = set()
    for epoch in range(40):
        plan, location, _ = dataset.plan(epoch, 0, (640, 480))
        expected = object_location(_seen_mask(example.mask, plan))
        assert location == expected
        _, _, text = dataset.sample(epoch, 0)
        assert text == f"add a flag at the {expected}"
        seen.add(expected)
        # the instruction check's spatial rule agrees with the phrase on the crop the model sees
        x0, y0, x1, y1 = mask_box(_seen_mask(example.mask, plan))
        assert location_contradiction(text, object_cells((x0, y0, x1 - x0, y1 - y0), 256, 256, None)) is None
    assert seen == {"center", "right"}, seen
    # the fixed crops of `latents: cache` carry the phrase of their own crop too
    fixed = dataset.fixed_plans(0, (640, 480))
    assert len(fixed) > 1
    assert [location for _, location in fixed] == [object_location(_seen_mask(example.mask, p)) for p, _ in fixed]

    # squash keeps relative positions: the phrase is the full photo's
    squash = PairDataset([example], resolution=256, location_prob=1.0, seed=0, crop="squash")
    assert {squash.sample(epoch, 0)[2] for epoch in range(5)} == {"add a flag at the center"}

    # random crops that cut the object away get no location phrase (never "center" by default)
    edge = _coco_like_pair(tmp_path, (slice(200, 280), slice(600, 630)), "edge")
    rnd = PairDataset([edge], resolution=256, location_prob=1.0, seed=0, crop="random")
    texts = set()
    for epoch in range(40):
        plan, location, _ = rnd.plan(epoch, 0, (640, 480))
        visible = _seen_mask(edge.mask, plan)
        assert location == (object_location(visible) if visible.any() else None)
        texts.add(rnd.sample(epoch, 0)[2])
    assert "add a flag" in texts and any(t.startswith("add a flag at the ") for t in texts)

    # without masks: the stored location, and "object" squashes
    bare = dataclasses.replace(example, mask=None, edit_mask=None, object_location="top left")
    plan, location, _ = PairDataset([bare], 256, 1.0, 0).plan(0, 0, (640, 480))
    assert plan.squashed and location == "top left"


def test_epoch_order_covers_every_example_once():
    batches = epoch_batches(5, 2, seed=0, epoch=3)
    assert [len(b) for b in batches] == [2, 2, 1]
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    assert batches == epoch_batches(5, 2, seed=0, epoch=3) != epoch_batches(5, 2, seed=0, epoch=4)
    # two processes: equal shares, together the whole epoch (wrapped round to fill up)
    shares = [epoch_batches(5, 2, seed=0, epoch=3, num_processes=2, process_index=r) for r in (0, 1)]
    assert [len(b) for b in shares[0]] == [len(b) for b in shares[1]]
    assert set(i for s in shares for b in s for i in b) == set(range(5))


# ---- the effective batch over several processes, and cached latents


def test_batch_plan_keeps_the_effective_batch_on_any_world_size():
    from pbi_ml.train.config import batch_plan

    paper = TrainConfig()
    assert paper.effective_batch == 4096
    assert batch_plan(paper, 1) == (128, 32) and batch_plan(paper, 8) == (128, 4) and batch_plan(paper, 2) == (128, 16)
    assert batch_plan(SMOKE, 1) == (2, 1) and batch_plan(SMOKE, 2) == (1, 1)
    small = dataclasses.replace(SMOKE, train_batch_size=4, gradient_accumulation_steps=1)
    assert batch_plan(small, 2) == (2, 1) and batch_plan(small, 4) == (1, 1)
    assert batch_plan(dataclasses.replace(paper, effective_batch_size=256), 4) == (64, 1)
    for world in (3, 5, 7):
        with pytest.raises(ConfigError, match=f"does not split over {world} process"):
            batch_plan(paper, world)
    with pytest.raises(ConfigError, match="effective_batch_size"):
        TrainConfig(effective_batch_size=0)
    with pytest.raises(ConfigError, match="latents"):
        TrainConfig(latents="sometimes")


def test_cached_latents_follow_the_on_the_fly_loss_curve_and_are_reused(examples, tmp_path):
    """Where the crop is unique (crop: squash) a cached run draws the same latents, noise and
    dropout as one encoding every step: the loss curves agree to float rounding (measured:
    <= 2e-7 relative; asserted 1e-5). A second run on the same pairs (another learning rate: a
    new checkpoint, the same VAE) encodes nothing."""
    config = dataclasses.replace(SMOKE, crop="squash", max_steps=2, checkpoint_every=2)
    on_the_fly = train_instruct_pix2pix(examples, config, tmp_path / "fly")
    cache_dir = tmp_path / "latent_cache"
    cached = train_instruct_pix2pix(
        examples, dataclasses.replace(config, latents="cache"), tmp_path / "cached", latent_cache_dir=cache_dir
    )
    assert on_the_fly.latents_encoded == 0 and cached.latents == "cache"
    assert cached.latents_encoded == len(examples) and cached.latents_reused == 0
    assert [s for s, _ in cached.loss_curve] == [s for s, _ in on_the_fly.loss_curve] == [1, 2]
    for (_, fly), (_, cache) in zip(on_the_fly.loss_curve, cached.loss_curve, strict=True):
        assert cache == pytest.approx(fly, rel=1e-5)
    entries = sorted(cache_dir.rglob("*.safetensors"))
    assert len(entries) == len(examples) and not list(cache_dir.rglob("*.tmp*")), "one entry per pair, no temp left"

    again = train_instruct_pix2pix(
        examples,
        dataclasses.replace(config, latents="cache", learning_rate=1e-4),
        tmp_path / "retrain",
        latent_cache_dir=cache_dir,
    )
    assert again.latents_encoded == 0 and again.latents_reused == len(examples)
    assert sorted(cache_dir.rglob("*.safetensors")) == entries


def test_non_square_pairs_get_a_fixed_set_of_crops(examples, tmp_path):
    """crop: object on 64x48 / 48x64 pairs: up to latent_crops distinct plans per pair, the same
    for every seed (the cache is shared), each holding the whole edit mask; a sample of any epoch
    uses one of them, picked by its seeded generator."""
    import torch

    from pbi_ml.train.latents import CachedLatentDataset, LatentCache, build_cache, missing_entries
    from pbi_ml.train.model import load_model_parts

    vae = load_model_parts("tiny", seed=0, tiny_sample_size=16).vae
    dataset = PairDataset(examples, 32, 0.25, seed=0, crop="object", latent_crops=4)
    other_seed = PairDataset(examples, 32, 0.25, seed=7, crop="object", latent_crops=4)
    cache = LatentCache(tmp_path / "lc", "vae-test", 32)
    keys, missing = missing_entries(dataset, cache)
    assert missing == list(range(len(examples)))
    stats = build_cache(dataset, cache, keys, missing, vae, torch.device("cpu"), torch.float32, batch_size=3)
    assert stats.pairs_encoded == len(examples)
    cache.write_index(keys)
    cached = CachedLatentDataset(dataset, cache, keys)
    for index, example in enumerate(examples):
        width, height = Image.open(example.target_image).size
        plans = dataset.fixed_plans(index, (width, height))
        assert plans == other_seed.fixed_plans(index, (width, height))
        assert cached.plan_counts[index] == len(plans)
        if width == height:
            assert len(plans) == 1
        else:
            assert 1 < len(plans) <= 4, "a 4:3 pair at 32 px has several windows holding its edit mask"
        edit = np.asarray(Image.open(example.edit_mask)) > 127
        for plan, _ in plans:
            seen = apply_plan(Image.fromarray(edit.astype(np.uint8) * 255), plan, Image.Resampling.NEAREST)
            assert (np.asarray(seen) > 127).sum() > 0
        tensors, locations = cache.read(keys[index])
        assert tensors["target_mean"].shape == (len(plans), 4, 16, 16) and len(locations) == len(plans)
        drawn = set()  # which plan each epoch's sample read
        for epoch in range(12):
            mean = cached[(epoch, index)]["target_mean"]
            drawn.add(int(torch.argmin(torch.stack([(mean - t).abs().sum() for t in tensors["target_mean"]]))))
        assert drawn <= set(range(len(plans))) and (len(drawn) > 1 or len(plans) == 1)


def test_a_partial_cache_gets_its_missing_pairs_split_over_the_processes(examples, tmp_path):
    """After a killed build holding pairs 0 and 2, two processes share the three missing pairs
    (2 + 1, not by pair index: process 0 would have had 0, 2, 4 and process 1 had 1, 3), one
    decoding in DataLoader workers; the cache then holds what a single process
    builds (to float rounding), and its index gives every entry's crop plan count."""
    import torch

    from pbi_ml.train.latents import LatentCache, build_cache, missing_entries
    from pbi_ml.train.model import load_model_parts

    vae = load_model_parts("tiny", seed=0, tiny_sample_size=16).vae
    dataset = PairDataset(examples, 32, 0.25, seed=0, crop="object", latent_crops=4)
    cpu, fp32 = torch.device("cpu"), torch.float32

    single = LatentCache(tmp_path / "single", "vae-test", 32)
    keys, missing = missing_entries(dataset, single)
    assert build_cache(dataset, single, keys, missing, vae, cpu, fp32, batch_size=1).pairs_encoded == len(examples)

    shared = LatentCache(tmp_path / "shared", "vae-test", 32)
    build_cache(dataset, shared, keys, [0, 2], vae, cpu, fp32, batch_size=1)  # the killed build's part
    assert missing_entries(dataset, shared) == (keys, [1, 3, 4])
    _, missing = missing_entries(dataset, shared)
    lines: list[str] = []
    shares = [missing[rank::2] for rank in range(2)]
    assert shares == [[1, 4], [3]]
    counts = [
        build_cache(dataset, shared, keys, shares[0], vae, cpu, fp32, batch_size=1, workers=2, log=lines.append),
        build_cache(dataset, shared, keys, shares[1], vae, cpu, fp32, batch_size=1),
    ]
    assert [c.pairs_encoded for c in counts] == [2, 1]
    assert missing_entries(dataset, shared) == (keys, [])
    # the same latents to float rounding (measured: <= 4e-6; a worker's arrays lie elsewhere in memory)
    for key in keys:
        (got, got_locations), (want, want_locations) = shared.read(key), single.read(key)
        assert got_locations == want_locations
        assert all(torch.allclose(got[name], want[name], rtol=0, atol=1e-5) for name in want)
    shared.write_index(keys)
    assert shared.read_index(keys) == [single.plan_count(k) for k in keys]
    assert sorted(p.name for p in shared.dir.rglob("*.json")) == [shared.index_path(keys).name]


def test_dataloader_workers_default_to_the_cores_per_process():
    import os

    from pbi_ml.train.config import MAX_DEFAULT_WORKERS, dataloader_workers

    cores = len(os.sched_getaffinity(0))
    assert SMOKE.dataloader_workers is None
    assert dataloader_workers(SMOKE, 1) == min(MAX_DEFAULT_WORKERS, cores)
    assert dataloader_workers(SMOKE, cores + 1) == 0
    assert dataloader_workers(dataclasses.replace(SMOKE, dataloader_workers=3), 64) == 3
    with pytest.raises(ConfigError, match="dataloader_workers"):
        TrainConfig(dataloader_workers=-1)


def test_gradient_checkpointing_trains_to_the_same_losses(examples, full_run, tmp_path, monkeypatch):
    """The UNet recomputes its activations in backward (diffusers' enable_gradient_checkpointing):
    the loss curve is the one without, to float rounding."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    enabled = []
    original = UNet2DConditionModel.enable_gradient_checkpointing

    def spy(unet):
        original(unet)
        enabled.append(unet.is_gradient_checkpointing)

    monkeypatch.setattr(UNet2DConditionModel, "enable_gradient_checkpointing", spy)
    _, full, _ = full_run
    config = dataclasses.replace(SMOKE, gradient_checkpointing=True)
    result = train_instruct_pix2pix(examples, config, tmp_path / "checkpointed")
    assert enabled == [True]
    assert [s for s, _ in result.loss_curve] == [1, 2, 3, 4]
    for (_, plain), (_, checkpointed) in zip(full.loss_curve, result.loss_curve, strict=True):
        assert checkpointed == pytest.approx(plain, rel=1e-5)


def test_checkpoint_id_names_the_latents_mode_not_the_world_size(examples):
    """Step s is the same samples on any world size (`batch_plan`): a run resumes on another one."""
    from pbi_ml.stages.training import checkpoint_id

    base = checkpoint_id("smoke", SMOKE, examples)
    assert checkpoint_id("smoke", dataclasses.replace(SMOKE, max_steps=40, num_processes=2), examples) == base
    assert checkpoint_id("smoke", dataclasses.replace(SMOKE, latents="cache"), examples) != base
    assert checkpoint_id("smoke", dataclasses.replace(SMOKE, latent_crops=2), examples) != base
    assert "world_size" not in run_identity(examples, SMOKE)


WRITE_ENTRY = """
import sys, torch
from pbi_ml.train.data import CropPlan
from pbi_ml.train.latents import LatentCache
cache = LatentCache(sys.argv[1], "vae", 32)
torch.manual_seed(0)
tensors = {name: torch.randn(2, 4, 4, 4) for name in ("target_mean", "target_std", "source_mean")}
plans = [(CropPlan((40, 32), (0, 0, 32, 32), False), "top left"), (CropPlan((40, 32), (8, 0, 40, 32), False), None)]
cache.write("abcd", tensors, plans)
print(cache.read("abcd", 1)[1])
"""


def test_a_latent_cache_entry_has_the_same_bytes_whichever_process_writes_it(tmp_path):
    """safetensors keeps header metadata in a hash map seeded per process: one entry keeps the
    bytes of a cache file fixed (the Dagster backfill and `pbi run` write the same files)."""
    import subprocess
    import sys

    blobs = []
    for run in range(3):
        root = tmp_path / f"run{run}"
        out = subprocess.run([sys.executable, "-c", WRITE_ENTRY, str(root)], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "['top left', None]"
        blobs.append((root / "vae" / "32" / "ab" / "abcd.safetensors").read_bytes())
    assert blobs[0] == blobs[1] == blobs[2]

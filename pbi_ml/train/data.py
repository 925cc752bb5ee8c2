"""Training examples, the data order, and the per-sample augmentation.

Every random choice here comes from a NumPy generator seeded by explicit integers, never from a
global RNG, so two runs with the same seed see identical samples in the same order, and a resumed
run can skip exactly the batches its checkpoint already consumed:

    order of epoch e         rng(ORDER, seed, e)            a permutation of the examples
    sample i of epoch e      rng(SAMPLE, seed, e, i)        crop offset, instruction kind, location coin
    fixed crop k of a pair   rng(CROPS, hash(pair key), k, 0)   `latents: cache` only (no seed: the
                                                            cache is shared by every run)

With `latents: cache` a sample draws, instead of the crop offset, which of its pair's fixed crop
plans it uses (no draw when the pair has a single one, as a square pair has; the crop offset of a
square pair draws nothing either, so both modes then consume the generator alike).

Crops (`TrainConfig.crop`, see `pbi_ml.train.config`): `crop_plan` decides the resize and the
square box; "object" draws the box uniformly among those that contain the whole edit mask. The
location phrase is then recomputed from the object mask as the model sees it (resized and cropped
like the images): the 3x3 grid cell of its centre of mass (`pbi_ml.masks.object_location`, the
rule the pairs stage stores `object_location` with); a crop that holds no object pixel ("random"
only) gets no phrase. A pair without masks keeps its stored `object_location`.

No horizontal flip: flipping would turn "add a dog at the top left" into a picture with the dog at
the top right, i.e. break the location phrases.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pbi_ml import reasons
from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_mask_png, load_rgb_path
from pbi_ml.masks import object_location

# Purpose tags keep the seed sequences of different uses apart (same length on purpose:
# NumPy's SeedSequence treats [a, b] and [a, b, 0] alike).
_ORDER, _SAMPLE, _STEP, _CROPS = 1, 2, 3, 4


@dataclass(frozen=True)
class TrainingExample:
    """One training pair."""

    source_image: str  # path: object removed (the model's INPUT image)
    target_image: str  # path: the original photo (the model's TARGET)
    instructions: tuple[str, ...]  # the non-empty instruction kinds of this pair; one chosen uniformly per sample
    object_location: str  # "top left" ... "bottom right" (3x3 grid of the mask centre, full image)
    key: str  # stable id (pair_id)
    mask: str | None = None  # path: the object's mask (where the location phrase is measured)
    edit_mask: str | None = None  # path: the dilated mask, every pixel source and target may differ in
    digest: str | None = None  # digest of the pair's files (pairs.output_digest): keys the latent cache


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def key_seed(key: str) -> int:
    """A 63-bit integer from a pair key (seeds its fixed crop plans)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def step_seed(seed: int, micro_batch: int, process_index: int = 0) -> int:
    """Seed of the torch generator of one micro-batch (noise, timesteps, dropout, latent sample)."""
    return int(
        np.random.SeedSequence([_STEP, seed, micro_batch, process_index]).generate_state(1, dtype=np.uint64)[0] >> 1
    )


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffled example indices of one epoch."""
    return _rng(_ORDER, seed, epoch, 0).permutation(num_examples)


def epoch_batches(
    num_examples: int, batch_size: int, seed: int, epoch: int, num_processes: int = 1, process_index: int = 0
) -> list[list[int]]:
    """The micro-batches (lists of example indices) this process sees in `epoch`.

    Global micro-batch k holds `batch_size * num_processes` examples of the epoch's order; process r
    takes every num_processes-th of them. With several processes the order is first filled up by
    wrapping around (as torch's DistributedSampler does) so every process gets the same number of
    examples per micro-batch; with one process the last micro-batch of an epoch may be short.
    """
    order = epoch_order(num_examples, seed, epoch)
    if num_processes > 1 and len(order) % num_processes:
        pad = num_processes - len(order) % num_processes
        order = np.concatenate([order, np.resize(order, pad)])
    global_size = batch_size * num_processes
    batches = []
    for start in range(0, len(order), global_size):
        chunk = order[start : start + global_size]
        batches.append([int(i) for i in chunk[process_index::num_processes]])
    return batches


def micro_batches_per_epoch(num_examples: int, batch_size: int, num_processes: int = 1) -> int:
    padded = -(-num_examples // num_processes) * num_processes
    return -(-padded // (batch_size * num_processes))


def with_location(instruction: str, location: str) -> str:
    """docs/method.md#instructions: the location phrase is " at the <location>", appended to the instruction."""
    return f"{instruction} at the {location}" if location else instruction


def shorter_side_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(width, height) after resizing (aspect ratio kept) so the shorter side is `size`."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


@dataclass(frozen=True)
class CropPlan:
    """How one sample is cut: resize the images to `size` (w, h), then crop `box` (l, t, r, b)."""

    size: tuple[int, int]
    box: tuple[int, int, int, int]
    squashed: bool  # True: the whole image squashed to the square (aspect ratio not kept)


def _window(length: int, size: int, lo: int, hi: int, rng: np.random.Generator) -> int | None:
    """Uniform offset of a `size` window on an axis of `length` that contains [lo, hi); None when
    no window does."""
    first, last = max(0, hi - size), min(length - size, lo)
    if first > last:
        return None
    return int(rng.integers(first, last + 1))


def crop_plan(
    width: int,
    height: int,
    resolution: int,
    mode: str,
    keep_box: tuple[int, int, int, int] | None,
    rng: np.random.Generator,
) -> CropPlan:
    """The resize and square crop of one sample (see the module docstring).

    `keep_box` (x0, y0, x1, y1), end-exclusive, in original pixels: what an "object" crop must
    contain (the edit mask's bounding box); None: no mask known ("object" then squashes)."""
    square = (0, 0, resolution, resolution)
    if mode == "squash" or (mode == "object" and keep_box is None):
        return CropPlan((resolution, resolution), square, True)
    w, h = shorter_side_size(width, height, resolution)
    if mode == "random":
        left = int(rng.integers(0, w - resolution + 1))
        top = int(rng.integers(0, h - resolution + 1))
        return CropPlan((w, h), (left, top, left + resolution, top + resolution), False)
    if mode != "object":
        raise ValueError(f"unknown crop mode {mode!r}")
    assert keep_box is not None, "an 'object' crop without a box squashes (returned above)"
    # the box in resized pixels, rounded outwards: every resized pixel a kept pixel touches
    x0, y0, x1, y1 = keep_box
    sx, sy = w / width, h / height
    bx0, bx1 = max(0, math.floor(x0 * sx)), min(w, math.ceil(x1 * sx))
    by0, by1 = max(0, math.floor(y0 * sy)), min(h, math.ceil(y1 * sy))
    left = _window(w, resolution, bx0, bx1, rng)
    top = _window(h, resolution, by0, by1, rng)
    if left is None or top is None:  # the edit is larger than the square: keep the whole image
        return CropPlan((resolution, resolution), square, True)
    return CropPlan((w, h), (left, top, left + resolution, top + resolution), False)


def apply_plan(image: Image.Image, plan: CropPlan, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """Resize `image` to the plan's size and cut its box."""
    if image.size != plan.size:
        image = image.resize(plan.size, resample)
    if plan.box != (0, 0, *plan.size):
        image = image.crop(plan.box)
    return image


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) end-exclusive bounding box of a bool mask; None when empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def location_in_crop(mask: np.ndarray, plan: CropPlan) -> str | None:
    """The 3x3 grid cell of the object mask's centre in the cropped image; None when the crop
    holds no object pixel."""
    seen = apply_plan(Image.fromarray(mask.astype(np.uint8) * 255), plan, Image.Resampling.NEAREST)
    seen = np.asarray(seen) > 127
    if not seen.any():
        return None
    return object_location(seen)


def to_model_range(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32).transpose(2, 0, 1)
    return array / 127.5 - 1.0


class PairDataset:
    """Map-style dataset over TrainingExample; items are addressed by (epoch, index).

    The epoch is part of the item key (instead of a mutable `set_epoch`) so loader workers need no
    shared state and the same key always gives the same sample. Returns a dict with
    `source_pixel_values` / `target_pixel_values` (3 x res x res float32 tensors in [-1, 1]) and
    `instruction` (str).

    Both images go through the SAME crop plan (`crop_plan`, mode `crop`), so the pair stays
    aligned; the location phrase describes the object's place in the cropped image.
    """

    def __init__(
        self,
        examples: list[TrainingExample],
        resolution: int,
        location_prob: float,
        seed: int,
        crop: str = "object",
        latent_crops: int = 4,
    ):
        self.examples = list(examples)
        self.resolution = resolution
        self.location_prob = location_prob
        self.seed = seed
        self.crop = crop
        self.latent_crops = latent_crops

    def __len__(self) -> int:
        return len(self.examples)

    def _mask(self, path: str | None, size: tuple[int, int], example: TrainingExample) -> np.ndarray | None:
        if not path:
            return None
        mask = load_mask_png(path)
        if mask.shape != (size[1], size[0]):
            raise ItemError(
                reasons.MASK_SIZE_MISMATCH, f"{example.key}: mask {mask.shape[::-1]} vs image {size} ({path})"
            )
        return mask

    def plan(self, epoch: int, index: int, size: tuple[int, int]) -> tuple[CropPlan, str | None, np.random.Generator]:
        """(crop plan, location of the object in the crop, the sample's generator after the crop
        draws) of example `index` in `epoch`, whose images are `size` (width, height)."""
        example = self.examples[index]
        rng = self.sample_rng(epoch, index)
        object_mask = self._mask(example.mask, size, example)
        edit_mask = self._mask(example.edit_mask, size, example)
        keep = edit_mask if edit_mask is not None else object_mask
        plan = crop_plan(
            size[0], size[1], self.resolution, self.crop, mask_box(keep) if keep is not None else None, rng
        )
        where = object_mask if object_mask is not None else edit_mask
        location = location_in_crop(where, plan) if where is not None else example.object_location
        return plan, location, rng

    def sample_rng(self, epoch: int, index: int) -> np.random.Generator:
        """The generator of sample `index` in `epoch` (crop draws first, then the instruction)."""
        return _rng(_SAMPLE, self.seed, epoch, index)

    def fixed_plans(self, index: int, size: tuple[int, int]) -> list[tuple[CropPlan, str | None]]:
        """The pair's fixed crop plans for `latents: cache` (distinct, in draw order) with the
        object's location in each: up to `latent_crops` plans drawn by rng(CROPS, pair key, k)."""
        example = self.examples[index]
        object_mask = self._mask(example.mask, size, example)
        edit_mask = self._mask(example.edit_mask, size, example)
        keep = edit_mask if edit_mask is not None else object_mask
        box = mask_box(keep) if keep is not None else None
        where = object_mask if object_mask is not None else edit_mask
        plans: dict[tuple, tuple[CropPlan, str | None]] = {}
        for k in range(self.latent_crops):
            plan = crop_plan(
                size[0], size[1], self.resolution, self.crop, box, _rng(_CROPS, key_seed(example.key), k, 0)
            )
            if (plan.size, plan.box) not in plans:
                location = location_in_crop(where, plan) if where is not None else example.object_location
                plans[(plan.size, plan.box)] = (plan, location)
        return list(plans.values())

    def instruction(self, index: int, rng: np.random.Generator, location: str | None) -> str:
        """The sample's instruction: a kind drawn uniformly, then the location coin."""
        example = self.examples[index]
        if not example.instructions:
            raise ItemError(reasons.NO_INSTRUCTION, example.key)
        instruction = example.instructions[int(rng.integers(0, len(example.instructions)))]
        if rng.random() < self.location_prob and location:
            instruction = with_location(instruction, location)
        return instruction

    def images(self, index: int) -> tuple[Image.Image, Image.Image]:
        """(source, target) of example `index`, checked to be the same size."""
        example = self.examples[index]
        source = Image.fromarray(load_rgb_path(example.source_image))
        target = Image.fromarray(load_rgb_path(example.target_image))
        if source.size != target.size:
            raise ItemError(reasons.PAIR_SIZE_MISMATCH, f"{example.key}: source {source.size} vs target {target.size}")
        return source, target

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(source CHW float32, target CHW float32, instruction) of example `index` in `epoch`."""
        source, target = self.images(index)
        plan, location, rng = self.plan(epoch, index, target.size)
        instruction = self.instruction(index, rng, location)
        return to_model_range(apply_plan(source, plan)), to_model_range(apply_plan(target, plan)), instruction

    def __getitem__(self, key: tuple[int, int]) -> dict:
        import torch

        epoch, index = key
        source, target, instruction = self.sample(epoch, index)
        return {
            "source_pixel_values": torch.from_numpy(source),
            "target_pixel_values": torch.from_numpy(target),
            "instruction": instruction,
        }


def collate(items: list[dict]) -> dict:
    import torch

    return {
        "source_pixel_values": torch.stack([it["source_pixel_values"] for it in items]),
        "target_pixel_values": torch.stack([it["target_pixel_values"] for it in items]),
        "instructions": [it["instruction"] for it in items],
    }


def sample_conditioning_dropout(u, text_prob: float, image_prob: float, both_prob: float):
    """Which samples lose their conditioning, from uniform draws `u` in [0, 1) (a torch tensor).

    The three cases are disjoint (docs/method.md#training: 5 % text, 5 % image, 5 % both):
        u < text_prob                               text dropped only
        text_prob <= u < text_prob + image_prob     image dropped only
        text_prob + image_prob <= u < sum of all    both dropped
    Returns (drop_text, drop_image) boolean tensors shaped like `u`.
    """
    image_start = text_prob
    both_start = text_prob + image_prob
    end = both_start + both_prob
    drop_text = (u < image_start) | ((u >= both_start) & (u < end))
    drop_image = (u >= image_start) & (u < end)
    return drop_text, drop_image

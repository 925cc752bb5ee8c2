"""Training examples, the data order, and the per-sample augmentation.

Every random choice here comes from a NumPy generator seeded by explicit integers, never from a
global RNG, so two runs with the same seed see identical samples in the same order, and a resumed
run can skip exactly the batches its checkpoint already consumed:

    order of epoch e         rng(ORDER, seed, e)            a permutation of the examples
    sample i of epoch e      rng(SAMPLE, seed, e, i)        crop offset, instruction kind, location coin

No horizontal flip: flipping would turn "add a dog at the top left" into a picture with the dog at
the top right, i.e. break the location phrases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pbi_ml.errors import ItemError
from pbi_ml.imageio import load_rgb_path

# Purpose tags keep the seed sequences of different uses apart (same length on purpose:
# NumPy's SeedSequence treats [a, b] and [a, b, 0] alike).
_ORDER, _SAMPLE, _STEP = 1, 2, 3


@dataclass(frozen=True)
class TrainingExample:
    """One training pair."""

    source_image: str  # path: object removed (the model's INPUT image)
    target_image: str  # path: the original photo (the model's TARGET)
    instructions: tuple[str, ...]  # the non-empty instruction kinds of this pair; one chosen uniformly per sample
    object_location: str  # "top left" ... "bottom right" (3x3 grid of the mask centre)
    key: str  # stable id (pair_id)


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


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
    """SPEC: the location phrase is " at the <location>", appended to the instruction."""
    return f"{instruction} at the {location}" if location else instruction


def resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    """Resize (keeping the aspect ratio) so the shorter side is `size` pixels."""
    w, h = image.size
    scale = size / min(w, h)
    new = (max(size, round(w * scale)), max(size, round(h * scale)))
    if new == (w, h):
        return image
    return image.resize(new, Image.Resampling.BICUBIC)


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

    Cropping: both images are resized so the shorter side is `resolution`, then the SAME random
    `resolution` x `resolution` crop is cut from both. (The location phrase refers to the full
    photo; a crop of the longer side can move the object a little relative to it, as in the paper.)
    """

    def __init__(self, examples: list[TrainingExample], resolution: int, location_prob: float, seed: int):
        self.examples = list(examples)
        self.resolution = resolution
        self.location_prob = location_prob
        self.seed = seed

    def __len__(self) -> int:
        return len(self.examples)

    def sample(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(source CHW float32, target CHW float32, instruction) of example `index` in `epoch`."""
        example = self.examples[index]
        rng = _rng(_SAMPLE, self.seed, epoch, index)
        source = Image.fromarray(load_rgb_path(example.source_image))
        target = Image.fromarray(load_rgb_path(example.target_image))
        if source.size != target.size:
            raise ItemError("pair_size_mismatch", f"{example.key}: source {source.size} vs target {target.size}")
        source = resize_shorter_side(source, self.resolution)
        target = resize_shorter_side(target, self.resolution)
        w, h = target.size
        left = int(rng.integers(0, w - self.resolution + 1))
        top = int(rng.integers(0, h - self.resolution + 1))
        box = (left, top, left + self.resolution, top + self.resolution)
        if not example.instructions:
            raise ItemError("no_instruction", example.key)
        instruction = example.instructions[int(rng.integers(0, len(example.instructions)))]
        if rng.random() < self.location_prob:
            instruction = with_location(instruction, example.object_location)
        return to_model_range(source.crop(box)), to_model_range(target.crop(box)), instruction

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

    The three cases are disjoint (SPEC: 5 % text, 5 % image, 5 % both):
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

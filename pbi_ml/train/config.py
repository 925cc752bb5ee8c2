"""Training configuration of the InstructPix2Pix-style "add an object" model.

Defaults are the paper's recipe (docs/method.md#training): SD 1.5 init, 256 px crops, Adam
lr 5e-5 without warm-up, gradient clipping at 1, an effective batch of 4096 (batch 128 per GPU x
8 GPUs x accumulation 4; written as 128 x accumulation 32 on one process, see below), 60 epochs, conditioning dropout 5 % text / 5 % image / 5 % both, and the location phrase
appended with probability 0.25.

Crops (`crop`): the model trains on `resolution` x `resolution` squares of each pair.

    object   (default) resize the shorter side to `resolution`, then a random square crop among
             those that contain the whole edit mask (the dilated object mask: every pixel where
             source and target differ); when the mask is wider (or taller) than the square can
             hold, or the pair has no mask, squash instead. The instruction never asks for an
             object the crop cut away.
    squash   resize the whole image to resolution x resolution, aspect ratio not kept (what
             diffusers' train_instruct_pix2pix.py does: `image.resize((resolution, resolution))`).
    random   resize the shorter side, random square crop anywhere (may cut the object off: on a
             4:3 COCO photo up to a quarter of the width is lost).

The location phrase (" at the top left") always describes where the object is in the image the
model sees: the 3x3 grid cell of the object mask's centre inside the crop (see
`pbi_ml.train.data`).

Batch over several processes (`num_processes`, one per device; `accelerate launch`). The
effective batch E (samples per optimizer step, all processes together) is `effective_batch_size`,
or `train_batch_size x gradient_accumulation_steps` when that is unset (what one process does with
the config as written). On W processes `batch_plan` keeps every micro-batch at most
`train_batch_size` per process and accumulates as few micro-batches as reach E:

    accumulation = ceil(E / (train_batch_size x W)),  per-process batch = E / (accumulation x W)

which must be a whole number, else ConfigError (e.g. E = 4096, batch 128: W = 8 -> 128 x 4,
W = 1 -> 128 x 32; E = 4, batch 4, W = 2 -> 2 x 1). Step s therefore consumes the same samples
on any W, and a run resumes on another world size than it was saved on; only the noise stream
changes (each process draws its own noise), which the resumed run logs and records.

Latents (`latents`): `on_the_fly` VAE-encodes both images of every sample at every step (the
original trainer); `cache` encodes each pair once per crop plan (`pbi_ml.train.latents`) and
trains from the stored latent distributions (target: mean and std, sampled per step exactly as
on the fly; source: its mode). A pair whose resized image is not a single square gets
`latent_crops` fixed crop plans (derived from the pair, not the seed) instead of a fresh random
crop per sample; each sample picks one of them with its seeded generator. Where the crop is unique
(square pairs, `crop: squash`) both modes see the same samples and the same noise.

`init_model="tiny"` is the embedded CPU default: a tiny random SD built from config
(`pbi_ml.tiny_sd`), no download. Its result is a smoke test of the training code path, not a
useful editor (`TrainResult.smoke_model` is True).
"""

from __future__ import annotations

from dataclasses import dataclass

from pbi_ml.errors import ConfigError

TINY_MODEL = "tiny"
MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
CROP_CHOICES = ("object", "squash", "random")
LATENTS_CHOICES = ("on_the_fly", "cache")

# Fields that do not change the training trajectory: a run may resume with other values of these.
# Every other field must match the checkpoint's, or resuming would silently mix two recipes.
# `num_processes` is a launch field: the resolved world size is fingerprinted in its place.
LENGTH_AND_IO_FIELDS = (
    "num_epochs",
    "max_steps",
    "checkpoint_every",
    "keep_checkpoints",
    "dataloader_workers",
    "num_processes",
    "latent_cache_timeout_s",
    "gradient_checkpointing",  # recomputes the same activations: the same trajectory, less memory
)
MAX_DEFAULT_WORKERS = 8  # `dataloader_workers: null`: the node's cores / processes, at most this


@dataclass(frozen=True)
class TrainConfig:
    """How to train. See the module docstring for the paper's recipe."""

    init_model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # (ex runwayml/) Hub id / local dir of an SD 1.5 text-to-image pipeline, or "tiny"
    resolution: int = 256  # side of the square training images (paper: 256)
    crop: str = "object"  # object | squash | random: how a pair becomes a square (module docstring)
    learning_rate: float = 5e-5  # constant, no warm-up
    adam_beta1: float = 0.9  # diffusers' InstructPix2Pix trainer defaults
    adam_beta2: float = 0.999  # Adam's second-moment decay
    # The paper says Adam: weight decay 0 makes torch's AdamW exactly Adam. (diffusers' trainer uses
    # AdamW with 1e-2; set weight_decay=0.01 to follow it instead.)
    weight_decay: float = 0.0
    epsilon: float = 1e-8  # Adam's epsilon
    max_grad_norm: float = 1.0  # gradient clipping (paper: 1)
    train_batch_size: int = 128  # per device at most (paper: 128/GPU x 8 A100 x accumulation 4 = 4096)
    # on one process: 128 x 32 = 4096, the paper's effective batch; on W processes `batch_plan`
    # recomputes it (8 GPUs: 128 x 4)
    gradient_accumulation_steps: int = 32
    effective_batch_size: int | None = None  # samples per optimizer step, all processes (None: batch x accumulation)
    num_processes: int | None = None  # training processes (accelerate launch); None: one per device of the step
    num_epochs: int | None = 60  # passes over the train split (paper: 60); max_steps overrides it
    max_steps: int | None = None  # optimizer steps; overrides num_epochs when set
    text_dropout: float = 0.05  # docs/method.md#training: 5 % text only ...
    image_dropout: float = 0.05  # ... 5 % image only ...
    both_dropout: float = 0.05  # ... 5 % both (disjoint cases)
    location_prob: float = 0.25  # append " at the <location>" to the instruction at training time
    use_ema: bool = False  # keep an exponential moving average of the UNet and save it
    ema_decay: float = 0.9999  # the EMA's decay per optimizer step (use_ema)
    mixed_precision: str = "auto"  # "no" on CPU; "auto" on CUDA -> bf16 if supported else fp16
    checkpoint_every: int = 500  # optimizer steps; the final step is always checkpointed too
    keep_checkpoints: int = 2  # newest checkpoints kept on disk; older ones are deleted
    seed: int = 0  # seeds noise, timesteps, dropout and crops: same seed, same run
    # DataLoader worker processes per training process, decoding pairs (training, latent cache
    # build); 0: in the main process; None: the node's cores / processes, at most 8
    dataloader_workers: int | None = None
    latent_cache_timeout_s: float = 6 * 3600  # how long processes wait for each other's latent cache share
    gradient_checkpointing: bool = False  # recompute the UNet's activations in backward: less memory, slower steps
    device: str = "auto"  # "auto" = cuda if available else cpu
    latents: str = "on_the_fly"  # on_the_fly | cache (module docstring; the paper recipe caches)
    latent_crops: int = 4  # latents: cache: fixed crop plans per pair whose crop is not unique

    def __post_init__(self):
        if self.resolution < 8:
            raise ConfigError(f"TrainConfig.resolution={self.resolution}: must be >= 8")
        if self.crop not in CROP_CHOICES:
            raise ConfigError(f"TrainConfig.crop={self.crop!r} not one of {CROP_CHOICES}")
        if self.train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ConfigError("TrainConfig: train_batch_size and gradient_accumulation_steps must be >= 1")
        if self.max_steps is None and self.num_epochs is None:
            raise ConfigError("TrainConfig: set num_epochs or max_steps")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"TrainConfig.max_steps={self.max_steps}: must be >= 1")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ConfigError(f"TrainConfig.num_epochs={self.num_epochs}: must be >= 1")
        probs = (self.text_dropout, self.image_dropout, self.both_dropout)
        if min(probs) < 0 or sum(probs) > 1:
            raise ConfigError(f"TrainConfig: dropout probabilities {probs} must be >= 0 and sum to <= 1")
        if not 0 <= self.location_prob <= 1:
            raise ConfigError(f"TrainConfig.location_prob={self.location_prob}: must be in [0, 1]")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise ConfigError(
                f"TrainConfig.mixed_precision={self.mixed_precision!r} not one of {MIXED_PRECISION_CHOICES}"
            )
        if self.checkpoint_every < 1 or self.keep_checkpoints < 1:
            raise ConfigError("TrainConfig: checkpoint_every and keep_checkpoints must be >= 1")
        if self.effective_batch_size is not None and self.effective_batch_size < 1:
            raise ConfigError(f"TrainConfig.effective_batch_size={self.effective_batch_size}: must be >= 1")
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError(f"TrainConfig.num_processes={self.num_processes}: must be >= 1")
        if self.latents not in LATENTS_CHOICES:
            raise ConfigError(f"TrainConfig.latents={self.latents!r} not one of {LATENTS_CHOICES}")
        if self.dataloader_workers is not None and self.dataloader_workers < 0:
            raise ConfigError(f"TrainConfig.dataloader_workers={self.dataloader_workers}: must be >= 0")
        if self.latent_cache_timeout_s <= 0:
            raise ConfigError(f"TrainConfig.latent_cache_timeout_s={self.latent_cache_timeout_s}: must be > 0")
        if self.latent_crops < 1:
            raise ConfigError(f"TrainConfig.latent_crops={self.latent_crops}: must be >= 1")

    @property
    def is_tiny(self) -> bool:
        return self.init_model == TINY_MODEL

    @property
    def effective_batch(self) -> int:
        """Samples per optimizer step over all processes."""
        if self.effective_batch_size is not None:
            return self.effective_batch_size
        return self.train_batch_size * self.gradient_accumulation_steps


def batch_plan(config: TrainConfig, world_size: int) -> tuple[int, int]:
    """(per-process micro-batch, gradient accumulation) that make the effective batch on
    `world_size` processes (rule in the module docstring); ConfigError when it does not divide."""
    if world_size < 1:
        raise ConfigError(f"world size {world_size}: must be >= 1")
    effective = config.effective_batch
    accumulation = -(-effective // (config.train_batch_size * world_size))
    per_process, rest = divmod(effective, accumulation * world_size)
    if rest or per_process < 1:
        raise ConfigError(
            f"TrainConfig: effective batch {effective} does not split over {world_size} process(es) with at most "
            f"train_batch_size={config.train_batch_size} per micro-batch (accumulation {accumulation} would need "
            f"{effective / (accumulation * world_size):g} per process); choose effective_batch_size (or "
            f"train_batch_size x gradient_accumulation_steps) as a multiple of train_batch_size x {world_size}"
        )
    return per_process, accumulation


def dataloader_workers(config: TrainConfig, world_size: int) -> int:
    """DataLoader workers per process: `config.dataloader_workers`, or when unset the cores this
    process may use divided among the `world_size` processes, at most MAX_DEFAULT_WORKERS."""
    import os

    if config.dataloader_workers is not None:
        return config.dataloader_workers
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_DEFAULT_WORKERS, cores // world_size)


def resolve_mixed_precision(mixed_precision: str, device: str) -> str:
    """ "auto" -> "no" off CUDA; on CUDA "bf16" when the GPU supports it, else "fp16"."""
    if mixed_precision != "auto":
        return mixed_precision
    if not device.startswith("cuda"):
        return "no"
    import torch

    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"

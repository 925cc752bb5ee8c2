"""The training loop: InstructPix2Pix's objective on (object removed -> original photo) pairs.

The objective follows diffusers' `examples/instruct_pix2pix/train_instruct_pix2pix.py`:

    latents      = VAE(target).sample() * scaling_factor        the photo WITH the object
    noisy        = scheduler.add_noise(latents, noise, t)
    text         = CLIP text encoder(instruction)
    image        = VAE(source).mode()                            the photo WITHOUT the object
    conditioning dropout (disjoint): 5 % text -> empty prompt, 5 % image -> zeros, 5 % both
    loss         = MSE(UNet(concat[noisy, image], t, text), noise)     (or v for v-prediction)

Reproducibility and resuming. The data is one flat stream of micro-batches (epoch after epoch,
each epoch in its seeded order, see `pbi_ml.train.data`); an optimizer step consumes
`gradient_accumulation_steps` consecutive micro-batches, and every micro-batch draws its noise,
timesteps, dropout and latent sample from a torch generator seeded by (seed, micro-batch index).
A checkpoint at step s therefore pins down everything that follows: a killed run restarted in
the same output_dir loads the latest checkpoint (accelerate state: UNet, optimizer, grad scaler,
EMA), skips the s * accumulation micro-batches already consumed, and ends at the same weights and
loss curve as an uninterrupted run (bit for bit on the same device, library versions and torch
thread count; CPU runs use torch's deterministic algorithms).

Layout of output_dir:

    checkpoints/step-00000500/   accelerate state + loss_curve.json + run.json (atomic: temp + rename)
    loss_curve.json              [[step, loss], ...] of the whole run (resumed runs included)
    pipeline/                    StableDiffusionInstructPix2PixPipeline.save_pretrained (atomic)
    training_summary.json

Several processes (`accelerate launch`, one per device): `batch_plan` sets the per-process batch
and the accumulation so the effective batch is the config's; process r takes every W-th example
of each global micro-batch and draws from its own generators (seeded by (seed, micro-batch, r)).
Rank 0 alone writes the checkpoints' extra files, the loss curve and the pipeline; every process
loads the same checkpoint on resume. The world size is not part of the run's identity: step s
consumes the same samples on any W (the effective batch is fixed), so a run saved on W processes
resumes on W' (a node with a GPU fewer after a reboot keeps its hours of training). Only the noise
stream changes, as each process draws from its own generators: the resumed run logs it and its
result records the world size it resumed from (`resumed_world_size`).

`latents: cache` (see `pbi_ml.train.latents`): before the first step the missing pairs are
encoded into the latent cache, shared evenly over the processes, which then wait for each other
under `latent_cache_timeout_s` (not the training group's timeout); the loop then reads latent
distributions instead of pixels.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from pbi_ml.errors import ConfigError
from pbi_ml.storage import atomic_write_bytes
from pbi_ml.train.config import (
    LENGTH_AND_IO_FIELDS,
    TrainConfig,
    batch_plan,
    dataloader_workers,
    resolve_mixed_precision,
)
from pbi_ml.train.data import (
    PairDataset,
    TrainingExample,
    collate,
    epoch_batches,
    micro_batches_per_epoch,
    sample_conditioning_dropout,
    step_seed,
)

CHECKPOINT_PREFIX = "step-"


@dataclass
class TrainResult:
    pipeline_dir: str
    steps: int  # optimizer steps of the whole run
    epochs_completed: float
    loss_curve: list[tuple[int, float]]  # (step, mean loss over the step's micro-batches), whole run
    samples_per_second: float  # over the steps THIS call ran (0.0 if it ran none)
    wall_time_s: float  # of this call
    resumed_from_step: int | None
    smoke_model: bool  # True: tiny random init, a smoke test of the code path, not a useful editor
    checkpoints: list[str]
    config: dict
    world_size: int = 1  # training processes
    process_index: int = 0  # this process's rank (only rank 0's result is complete on disk)
    per_process_batch: int = 0  # micro-batch of one process
    accumulation: int = 1  # micro-batches per optimizer step
    latents: str = "on_the_fly"
    latents_encoded: int = 0  # pairs encoded into the latent cache by this call, all processes
    latents_reused: int = 0  # pairs found in the latent cache, all processes
    resumed_world_size: int | None = None  # processes of the checkpoint resumed from (another W: other noise)
    latents_build_s: float = 0.0  # seconds listing, encoding and indexing the latent cache (all processes)


# --------------------------------------------------------------------------------------------
# The objective


def encode_prompts(tokenizer, text_encoder, prompts: list[str], device):
    """CLIP text-encoder hidden states (batch x 77 x dim) of `prompts`."""
    ids = tokenizer(
        prompts, max_length=tokenizer.model_max_length, padding="max_length", truncation=True, return_tensors="pt"
    ).input_ids
    return text_encoder(ids.to(device))[0]


def encode_pair(vae, source_pixels, target_pixels, generator):
    """VAE latents of the pair: the target sampled from the posterior and scaled (what the UNet
    denoises), the source's posterior mode unscaled (the image conditioning), as in diffusers'
    trainer. Pre-encoding these is what makes optimised trainers ~10x faster (docs/method.md#speed-anchors)."""
    latents = vae.encode(target_pixels).latent_dist.sample(generator=generator) * vae.config.scaling_factor
    image_embeds = vae.encode(source_pixels).latent_dist.mode()
    return latents, image_embeds


def cached_pair_latents(batch, scaling_factor: float, generator, device, dtype):
    """`encode_pair` from a batch of cached latent distributions (`pbi_ml.train.latents`): the
    target sampled with the same draw `latent_dist.sample(generator)` makes, the source's mode."""
    from diffusers.utils.torch_utils import randn_tensor

    mean = batch["target_mean"].to(device, dtype=dtype)
    std = batch["target_std"].to(device, dtype=dtype)
    sample = mean + std * randn_tensor(mean.shape, generator=generator, device=device, dtype=dtype)
    return sample * scaling_factor, batch["source_mean"].to(device, dtype=dtype)


@dataclass
class EncodedBatch:
    """One micro-batch in the UNet's terms."""

    latents: Any  # the photo with the object: VAE sample x scaling factor (what is denoised)
    image_embeds: Any  # the photo without it: the VAE posterior's mode (the image conditioning)
    text_embeds: Any  # the instructions' CLIP hidden states


def encode_batch(batch: dict, *, vae, tokenizer, text_encoder, generator, dtype) -> EncodedBatch:
    """A collated micro-batch, of pixels (`collate`) or of cached latent distributions
    (`collate_latents`), encoded on the generator's device; the latent sample draws from
    `generator`."""
    import torch

    device = generator.device
    with torch.no_grad():
        text_embeds = encode_prompts(tokenizer, text_encoder, batch["instructions"], device)
        if "target_mean" in batch:
            latents, image_embeds = cached_pair_latents(batch, vae.config.scaling_factor, generator, device, dtype)
        else:
            source = batch["source_pixel_values"].to(device, dtype=dtype)
            target = batch["target_pixel_values"].to(device, dtype=dtype)
            latents, image_embeds = encode_pair(vae, source, target, generator)
    return EncodedBatch(latents=latents, image_embeds=image_embeds, text_embeds=text_embeds)


def denoising_loss(
    unet, noise_scheduler, batch: EncodedBatch, *, null_text_embeds, generator, dropout: tuple[float, float, float]
):
    """The InstructPix2Pix denoising loss of an encoded micro-batch (see the module docstring).
    `dropout`: the (text, image, both) conditioning dropout probabilities. Noise, timesteps and
    dropout draw from `generator`, in that order."""
    import torch
    import torch.nn.functional as F

    latents = batch.latents
    bsz, device = latents.shape[0], latents.device
    noise = torch.randn(latents.shape, generator=generator, device=device, dtype=latents.dtype)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (bsz,), generator=generator, device=device
    ).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)

    u = torch.rand(bsz, generator=generator, device=device)
    drop_text, drop_image = sample_conditioning_dropout(u, *dropout)
    text_embeds = torch.where(
        drop_text.reshape(bsz, 1, 1), null_text_embeds.to(batch.text_embeds.dtype), batch.text_embeds
    )
    image_embeds = batch.image_embeds * (~drop_image).to(batch.image_embeds.dtype).reshape(bsz, 1, 1, 1)

    model_input = torch.cat([noisy_latents, image_embeds], dim=1)
    prediction_type = noise_scheduler.config.prediction_type
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ConfigError(f"unsupported scheduler prediction_type {prediction_type!r}")
    model_pred = unet(model_input, timesteps, text_embeds).sample
    return F.mse_loss(model_pred.float(), target.float(), reduction="mean")


# --------------------------------------------------------------------------------------------
# Checkpoints


def run_identity(examples: list[TrainingExample], config: TrainConfig) -> dict:
    """What a run is: the config without its length and I/O fields and the training pairs (key,
    instructions, location, content digest; not where the data root is). A checkpoint resumes only
    the same run, on any world size; `pbi_ml.stages.training.checkpoint_id` names the run after it."""
    trajectory = {k: v for k, v in dataclasses.asdict(config).items() if k not in LENGTH_AND_IO_FIELDS}
    pairs = [(e.key, list(e.instructions), e.object_location, e.digest) for e in examples]
    fingerprint = hashlib.blake2b(json.dumps(pairs).encode(), digest_size=16).hexdigest()
    return {
        "config": trajectory,
        "examples": len(examples),
        "examples_fingerprint": fingerprint,
    }


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (step, dir), oldest first. Temp dirs of interrupted saves are ignored."""
    root = Path(output_dir) / "checkpoints"
    found = []
    if root.is_dir():
        for path in root.iterdir():
            name = path.name
            if path.is_dir() and name.startswith(CHECKPOINT_PREFIX) and name[len(CHECKPOINT_PREFIX) :].isdigit():
                found.append((int(name[len(CHECKPOINT_PREFIX) :]), path))
    return sorted(found)


def _write_json(path: Path, value) -> None:
    atomic_write_bytes(path, json.dumps(value, indent=1, sort_keys=True).encode())


def _save_checkpoint(accelerator, output_dir: Path, step: int, loss_curve, run: dict, keep: int) -> Path:
    """Save step `step`; `run`: the run's identity and the world size that saved it (run.json)."""
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = root / f".{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(tmp / "loss_curve.json", [[s, loss] for s, loss in loss_curve])
        _write_json(tmp / "run.json", run)
        if final.exists():  # re-saving the same step (a rerun of a finished run)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_json(output_dir / "loss_curve.json", [[s, loss] for s, loss in loss_curve])
        for _, old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _save_pipeline_atomically(pipeline, final: Path) -> None:
    tmp = final.parent / f".{final.name}.tmp"
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    pipeline.save_pretrained(str(tmp), safe_serialization=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def cache_barrier(num_processes: int, timeout_s: float) -> Callable[[], None]:
    """A barrier of all processes for the latent cache phase, under its own timeout: a process
    group (gloo, any device) made for it, so the hours a large cache can take do not run into the
    training group's (NCCL: 10 minutes). Every process must call this."""
    if num_processes == 1:
        return lambda: None
    from datetime import timedelta

    import torch.distributed as dist

    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    assert isinstance(group, dist.ProcessGroup), "every process is in the group"

    def wait() -> None:
        dist.barrier(group=group)

    return wait


# --------------------------------------------------------------------------------------------
# The loop


def train_instruct_pix2pix(
    examples: list[TrainingExample],
    config: TrainConfig,
    output_dir: str | Path,
    progress: Callable[[int, int, float], None] | None = None,
    *,
    log: Callable[[str], None] | None = None,
    latent_cache_dir: str | Path | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train (or resume training) an InstructPix2Pix model on `examples`; save the pipeline.

    `progress(step, total_steps, loss)` is called after every optimizer step. Re-running with the
    same examples and config in the same `output_dir` resumes from the latest checkpoint (and a
    finished run just re-saves its pipeline). Returns a TrainResult; see the module docstring for
    the files written. `log(line)` (rank 0) gets the latent cache's progress and a resume on
    another world size. `latent_cache_dir`: the latent cache's root (`latents: cache`; default
    output_dir/latent_cache). `device`: run there instead of `config.device` (a launcher's choice,
    not part of the run's identity).
    """
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from pbi_ml.devices import resolve_device
    from pbi_ml.train.model import build_pipeline, load_model_parts

    if not examples:
        raise ValueError("train_instruct_pix2pix: no training examples")
    started = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device_name = resolve_device(device or config.device)
    mixed_precision = resolve_mixed_precision(config.mixed_precision, device_name)
    if device_name.startswith("cuda:") and int(os.environ.get("WORLD_SIZE") or 1) == 1:
        # one process on a given GPU (a leased cuda:1): accelerate's single-process device is
        # "cuda", the current one (several processes: LOCAL_RANK within CUDA_VISIBLE_DEVICES)
        torch.cuda.set_device(int(device_name.split(":")[1]))
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        project_dir=str(output_dir),
        cpu=device_name == "cpu",
    )
    num_processes, rank = accelerator.num_processes, accelerator.process_index
    batch_size, accum = batch_plan(config, num_processes)
    accelerator.gradient_accumulation_steps = accum
    torch_device = accelerator.device
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    if torch_device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        set_seed(config.seed)
        # The tiny VAE downsamples by 2: its latents are resolution / 2 on a side.
        parts = load_model_parts(config.init_model, seed=config.seed, tiny_sample_size=max(config.resolution // 2, 4))
        unet = parts.unet
        if config.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        optimizer = torch.optim.AdamW(
            unet.parameters(),
            lr=config.learning_rate,
            betas=(config.adam_beta1, config.adam_beta2),
            weight_decay=config.weight_decay,
            eps=config.epsilon,
        )
        ema = None
        if config.use_ema:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
            from diffusers.training_utils import EMAModel

            ema = EMAModel(
                unet.parameters(), decay=config.ema_decay, model_cls=UNet2DConditionModel, model_config=unet.config
            )
        unet, optimizer = accelerator.prepare(unet, optimizer)
        if ema is not None:
            ema.to(torch_device)
            accelerator.register_for_checkpointing(ema)

        weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
        # Keep full-precision copies of the frozen parts for the saved pipeline: casting in place
        # to half precision would lose bits for good.
        frozen_fp32 = None
        if weight_dtype != torch.float32:
            frozen_fp32 = (copy.deepcopy(parts.vae), copy.deepcopy(parts.text_encoder))
        vae, text_encoder = parts.vae.to(torch_device), parts.text_encoder.to(torch_device)
        if weight_dtype != torch.float32:
            vae, text_encoder = vae.to(dtype=weight_dtype), text_encoder.to(dtype=weight_dtype)

        per_epoch = micro_batches_per_epoch(len(examples), batch_size, num_processes)
        if config.max_steps is not None:
            total_steps = config.max_steps
        else:
            assert config.num_epochs is not None, "TrainConfig requires num_epochs or max_steps"
            total_steps = math.ceil(config.num_epochs * per_epoch / accum)
        identity = run_identity(examples, config)
        say = log if log is not None and accelerator.is_main_process else (lambda line: None)
        workers = dataloader_workers(config, num_processes)

        # ---- resume
        loss_curve: list[tuple[int, float]] = []
        resumed_from = resumed_world_size = None
        global_step = 0
        if accelerator.is_main_process:  # half-written saves of a killed run: never resumed, only in the way
            for torn in (output_dir / "checkpoints").glob(f".{CHECKPOINT_PREFIX}*.tmp"):
                shutil.rmtree(torn, ignore_errors=True)
        accelerator.wait_for_everyone()
        existing = list_checkpoints(output_dir)
        if existing:
            step, ckpt = existing[-1]
            saved = json.loads((ckpt / "run.json").read_text())
            resumed_world_size = int(saved.pop("world_size"))
            if saved != identity:
                raise ConfigError(
                    f"{ckpt}: checkpoint of a different run (config or training examples changed); "
                    f"use a new output_dir. saved={saved['config']} now={identity['config']}"
                )
            if step > total_steps:
                raise ConfigError(f"{ckpt}: checkpoint at step {step} is past the requested {total_steps} steps")
            accelerator.load_state(str(ckpt))
            if ema is not None:
                # accelerate loads registered objects' state with map_location="cpu": the EMA shadow
                # comes back on the CPU whatever the device, and the next ema.step on CUDA would fail
                ema.to(torch_device)
            accelerator.step = step * accum  # micro-batch counter of gradient accumulation (also in the state)
            loss_curve = [(int(s), float(loss)) for s, loss in json.loads((ckpt / "loss_curve.json").read_text())]
            resumed_from = global_step = step
            if resumed_world_size != num_processes:
                say(
                    f"resuming step {step} saved on {resumed_world_size} process(es) on {num_processes}: the same "
                    "samples from here on, but the noise stream changed (every process draws its own noise)"
                )

        with torch.no_grad():
            null_text_embeds = encode_prompts(parts.tokenizer, text_encoder, [""], torch_device)
        dropout = (config.text_dropout, config.image_dropout, config.both_dropout)

        # ---- the data (and the latent cache)
        dataset = PairDataset(
            examples,
            config.resolution,
            config.location_prob,
            config.seed,
            crop=config.crop,
            latent_crops=config.latent_crops,
        )
        encoded = reused = 0
        build_seconds = 0.0
        if config.latents == "cache":
            from pbi_ml.train.latents import (
                CachedLatentDataset,
                LatentCache,
                build_cache,
                collate_latents,
                missing_entries,
                vae_identity,
            )

            cache_root = Path(latent_cache_dir) if latent_cache_dir is not None else output_dir / "latent_cache"
            cache = LatentCache(cache_root, vae_identity(vae, weight_dtype), config.resolution)
            wait_for_cache = cache_barrier(num_processes, config.latent_cache_timeout_s)
            build_started = time.perf_counter()
            keys, missing = missing_entries(dataset, cache)
            accelerator.wait_for_everyone()  # every process listed the same missing entries
            say(f"latent cache: {len(missing)} of {len(keys)} pairs to encode on {num_processes} process(es)")
            stats = build_cache(
                dataset,
                cache,
                keys,
                missing[rank::num_processes],
                vae,
                torch_device,
                weight_dtype,
                batch_size,
                workers=workers,
                log=say,
            )
            wait_for_cache()
            if accelerator.is_main_process:
                cache.write_index(keys)
            wait_for_cache()
            build_seconds = time.perf_counter() - build_started
            counts = torch.tensor([stats.pairs_encoded], device=torch_device)
            encoded = int(cast(torch.Tensor, accelerator.reduce(counts, reduction="sum")).item())
            reused = len(keys) - len(missing)
            say(f"latent cache: {encoded} pairs encoded, {reused} reused in {build_seconds:.1f} s")
            loader_dataset, collate_fn = CachedLatentDataset(dataset, cache, keys), collate_latents
        else:
            loader_dataset, collate_fn = dataset, collate

        # ---- train
        micro = global_step * accum  # index in the flat micro-batch stream
        step_losses: list[float] = []
        samples_seen = 0
        loop_started = time.perf_counter()
        unet.train()
        while global_step < total_steps:
            epoch, offset = divmod(micro, per_epoch)
            batches = epoch_batches(len(examples), batch_size, config.seed, epoch, num_processes, rank)[offset:]
            loader = torch.utils.data.DataLoader(
                # a map-style dataset by duck typing (__getitem__ / __len__), keyed by (epoch, index)
                cast(torch.utils.data.Dataset[dict], loader_dataset),
                batch_sampler=[[(epoch, i) for i in batch] for batch in batches],
                collate_fn=collate_fn,
                num_workers=workers,
            )
            for batch in loader:
                with accelerator.accumulate(unet):
                    generator = torch.Generator(device=torch_device).manual_seed(step_seed(config.seed, micro, rank))
                    inputs = encode_batch(
                        batch,
                        vae=vae,
                        tokenizer=parts.tokenizer,
                        text_encoder=text_encoder,
                        generator=generator,
                        dtype=weight_dtype,
                    )
                    loss = denoising_loss(
                        unet,
                        parts.noise_scheduler,
                        inputs,
                        null_text_embeds=null_text_embeds,
                        generator=generator,
                        dropout=dropout,
                    )
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(unet.parameters(), config.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad()
                # accelerate's gather is unannotated (pyright infers its nested list / dict cases too); a tensor gives a tensor
                gathered = cast(torch.Tensor, accelerator.gather(loss.detach().reshape(1)))
                step_losses.append(gathered.mean().item())
                samples_seen += len(batch["instructions"]) * num_processes
                micro += 1
                if not accelerator.sync_gradients:
                    continue
                global_step += 1
                if ema is not None:
                    ema.step(unet.parameters())
                step_loss = float(sum(step_losses) / len(step_losses))
                step_losses = []
                loss_curve.append((global_step, step_loss))
                if progress is not None and accelerator.is_main_process:
                    progress(global_step, total_steps, step_loss)
                if global_step % config.checkpoint_every == 0 or global_step == total_steps:
                    _save_checkpoint(
                        accelerator,
                        output_dir,
                        global_step,
                        loss_curve,
                        {**identity, "world_size": num_processes},
                        config.keep_checkpoints,
                    )
                if global_step >= total_steps:
                    break
        loop_seconds = time.perf_counter() - loop_started

        # ---- the pipeline
        pipeline_dir = output_dir / "pipeline"
        if accelerator.is_main_process:
            final_unet = accelerator.unwrap_model(unet)
            if ema is not None:
                ema.copy_to(final_unet.parameters())
            if frozen_fp32 is not None:
                parts.vae, parts.text_encoder = frozen_fp32
            else:
                parts.vae, parts.text_encoder = vae, text_encoder
            parts.vae.to("cpu")
            parts.text_encoder.to("cpu")
            final_unet = final_unet.to("cpu")
            if final_unet.dtype != torch.float32:
                final_unet = final_unet.to(dtype=torch.float32)
            pipeline = build_pipeline(parts, unet=final_unet)
            _save_pipeline_atomically(pipeline, pipeline_dir)
        accelerator.wait_for_everyone()

        wall = time.perf_counter() - started
        result = TrainResult(
            pipeline_dir=str(pipeline_dir),
            steps=global_step,
            epochs_completed=global_step * accum / per_epoch,
            loss_curve=loss_curve,
            samples_per_second=samples_seen / loop_seconds if samples_seen and loop_seconds > 0 else 0.0,
            wall_time_s=wall,
            resumed_from_step=resumed_from,
            smoke_model=parts.smoke_model,
            checkpoints=[str(p) for _, p in list_checkpoints(output_dir)],
            config=dataclasses.asdict(config),
            world_size=num_processes,
            process_index=rank,
            per_process_batch=batch_size,
            accumulation=accum,
            latents=config.latents,
            latents_encoded=encoded,
            latents_reused=reused,
            resumed_world_size=resumed_world_size,
            latents_build_s=build_seconds,
        )
        if accelerator.is_main_process:
            _write_json(output_dir / "loss_curve.json", [[s, loss] for s, loss in loss_curve])
            summary = dataclasses.asdict(result)
            summary.update(
                total_steps=total_steps,
                micro_batches_per_epoch=per_epoch,
                num_processes=num_processes,
                mixed_precision=accelerator.mixed_precision,
                device=str(torch_device),
                examples=len(examples),
                samples_this_call=samples_seen,
            )
            _write_json(output_dir / "training_summary.json", summary)
        accelerator.end_training()
        return result
    finally:
        torch.use_deterministic_algorithms(deterministic_before)

"""Cached VAE latents (`TrainConfig.latents = "cache"`): encode each pair once, train from the cache.

What is stored, per pair and fixed crop plan (`PairDataset.fixed_plans`), as float32 C x h x w:

    target_mean, target_std   the target's latent distribution (VAE posterior): training samples
                              mean + std * randn from the micro-batch's generator, then scales by
                              the VAE's scaling_factor - the very draw `latent_dist.sample` makes
    source_mean               the source's posterior mode (the image conditioning)

so a cached run sees the same latents as one encoding on the fly (up to float rounding of
batched convolutions) whenever both use the same crop.

Layout: `<root>/<vae id>/<resolution>/<kk>/<entry key>.safetensors`, one file per pair holding
every crop plan of it (first axis), the plans and the object's location in each in the file's
metadata. The VAE id hashes the VAE's config, its weights and the dtype it encodes in; the entry
key hashes the pair key, the digest of its four files (`TrainingExample.digest`, the pairs
table's `output_digest`; without one: the paths, sizes and modification times of source, target,
mask and edit mask), the crop mode and the number of fixed crops. With digests the cache is the
same, file for file, on any data root holding the same pairs. Files are written atomically (temp
+ rename), so a killed encoder leaves no torn entry; anything that changes makes a new key, and
retraining on the same pairs (another seed, learning rate, more steps) encodes nothing.

Building: every process lists the missing entries (`missing_entries`), then takes every W-th of
that list, so after a killed partial build the work left is shared evenly; DataLoader workers
decode and crop the images while the process encodes. The processes then wait for each other
under their own long timeout (`TrainConfig.latent_cache_timeout_s`), and rank 0 writes the
index of the pairs' entries (`write_index`: their crop plan counts), which every process reads
instead of opening every entry. At 256 px an entry takes 48 KB per crop plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from pbi_ml.storage import atomic_write_bytes
from pbi_ml.train.data import CropPlan, PairDataset, apply_plan, to_model_range

CACHE_VERSION = 2  # 2: the metadata in one entry (byte-identical files across processes)
TENSORS = ("target_mean", "target_std", "source_mean")


def vae_identity(vae, dtype) -> str:
    """Hash of the VAE's config, weights and encoding dtype."""
    import torch

    digest = hashlib.blake2b(digest_size=10)
    # (diffusers' private config keys such as _use_default_values come from sets: no stable order)
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    digest.update(str(dtype).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return f"vae-{digest.hexdigest()}"


def _file_stamp(path: str | None) -> list:
    if not path:
        return [None]
    st = os.stat(path)
    return [path, st.st_size, st.st_mtime_ns]


def entry_key(dataset: PairDataset, index: int) -> str:
    """The cache key of one pair (module docstring)."""
    e = dataset.examples[index]
    blob = json.dumps(
        [
            CACHE_VERSION,
            e.key,
            *(
                [["digest", e.digest]]
                if e.digest
                else [_file_stamp(p) for p in (e.source_image, e.target_image, e.mask, e.edit_mask)]
            ),
            dataset.crop,
            dataset.latent_crops,
        ]
    ).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


@dataclass
class CacheStats:
    pairs_encoded: int = 0  # pairs this process encoded (entries written)
    plans_encoded: int = 0  # crop plans this process encoded (images encoded = 2 x this)
    pairs_reused: int = 0  # pairs found in the cache


class LatentCache:
    """The cached latents of one VAE at one resolution (module docstring)."""

    def __init__(self, root: str | Path, vae_id: str, resolution: int):
        self.dir = Path(root) / vae_id / str(resolution)

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.safetensors"

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def write(self, key: str, tensors: dict, plans: list[tuple[CropPlan, str | None]]) -> None:
        import torch
        from safetensors.torch import save

        # one metadata entry: safetensors keeps metadata in a hash map whose order changes from one
        # process to the next, so two entries would give other bytes for the same latents
        meta = {
            "pbi": json.dumps(
                {
                    "plans": [[list(p.size), list(p.box), p.squashed] for p, _ in plans],
                    "locations": [loc for _, loc in plans],
                },
                sort_keys=True,
            )
        }
        blob = save(
            {k: v.detach().to("cpu", dtype=torch.float32).contiguous() for k, v in tensors.items()}, metadata=meta
        )
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, blob)

    def read(self, key: str, plan: int | None = None) -> tuple[dict, list[str | None]]:
        """(tensors of crop plan `plan`, or of all plans when None; the locations of all plans)."""
        from safetensors import safe_open

        with safe_open(str(self.path(key)), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: (f.get_slice(name)[plan] if plan is not None else f.get_tensor(name)) for name in TENSORS}
        return tensors, json.loads(meta.get("pbi", "{}")).get("locations", [])

    def plan_count(self, key: str) -> int:
        from safetensors import safe_open

        with safe_open(str(self.path(key)), framework="pt") as f:
            return int(f.get_slice("target_mean").get_shape()[0])

    def index_path(self, keys: list[str]) -> Path:
        digest = hashlib.blake2b(json.dumps(keys).encode(), digest_size=16).hexdigest()
        return self.dir / "index" / f"{digest}.json"

    def write_index(self, keys: list[str]) -> None:
        """Record the crop plan count of every entry of `keys` (all present) in one file, once."""
        path = self.index_path(keys)
        if not path.is_file():
            atomic_write_bytes(path, json.dumps([self.plan_count(k) for k in keys]).encode())

    def read_index(self, keys: list[str]) -> list[int]:
        """The crop plan counts of `keys`, from the index `write_index` wrote."""
        return json.loads(self.index_path(keys).read_text())


def missing_entries(dataset: PairDataset, cache: LatentCache) -> tuple[list[str], list[int]]:
    """(the entry key of every pair, the indices of the pairs missing from `cache`)."""
    keys = [entry_key(dataset, i) for i in range(len(dataset))]
    return keys, [i for i, key in enumerate(keys) if not cache.has(key)]


class CropPixels:
    """The model-range pixels of every fixed crop plan of some pairs of `dataset` (what a cache
    entry encodes), one pair per item, for a DataLoader's workers: (index, plans, [(source, target)])."""

    def __init__(self, dataset: PairDataset, indices: list[int]):
        self.dataset = dataset
        self.indices = indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int):
        index = self.indices[item]
        source, target = self.dataset.images(index)
        plans = self.dataset.fixed_plans(index, target.size)
        pixels = [(to_model_range(apply_plan(source, p)), to_model_range(apply_plan(target, p))) for p, _ in plans]
        return index, plans, pixels


def _one_item(item):
    return item


def build_cache(
    dataset: PairDataset,
    cache: LatentCache,
    keys: list[str],
    indices: list[int],
    vae,
    device,
    dtype,
    batch_size: int,
    workers: int = 0,
    log: Callable[[str], None] | None = None,
) -> CacheStats:
    """Encode the pairs `indices` of `dataset` (this process's share of `missing_entries`) into
    `cache` under their `keys`, decoding in `workers` DataLoader workers; `log` gets a progress
    line about every 30 s. Returns this process's counts."""
    import torch

    stats = CacheStats()
    pending: list[tuple[int, list[tuple[CropPlan, str | None]]]] = []
    pixels: list = []  # (source, target) CHW arrays of the pending plans, in order

    def flush():
        if not pending:
            return
        source = torch.from_numpy(_stack([s for s, _ in pixels])).to(device, dtype=dtype)
        target = torch.from_numpy(_stack([t for _, t in pixels])).to(device, dtype=dtype)
        with torch.no_grad():
            target_dist = vae.encode(target).latent_dist
            source_dist = vae.encode(source).latent_dist
        start = 0
        for index, plans in pending:
            end = start + len(plans)
            cache.write(
                keys[index],
                {
                    "target_mean": target_dist.mean[start:end],
                    "target_std": target_dist.std[start:end],
                    "source_mean": source_dist.mode()[start:end],
                },
                plans,
            )
            stats.pairs_encoded += 1
            stats.plans_encoded += len(plans)
            start = end
        pending.clear()
        pixels.clear()

    loader = torch.utils.data.DataLoader(
        # a map-style dataset by duck typing (__getitem__ / __len__); one pair per item, as it is
        cast(torch.utils.data.Dataset, CropPixels(dataset, indices)),
        batch_size=None,
        collate_fn=_one_item,
        num_workers=workers,
    )
    started = last = time.perf_counter()
    for index, plans, crops in loader:
        pending.append((index, plans))
        pixels.extend(crops)
        if len(pixels) >= batch_size:
            flush()
        now = time.perf_counter()
        if log is not None and now - last >= 30:
            done = stats.pairs_encoded
            log(f"latent cache: {done}/{len(indices)} pairs encoded ({done / (now - started):.1f} pairs/s)")
            last = now
    flush()
    return stats


def _stack(arrays):
    import numpy as np

    return np.stack(arrays)


class CachedLatentDataset:
    """Map-style dataset over the cache, keyed by (epoch, index) like `PairDataset`: a sample
    draws its crop plan (when its pair has several) and then its instruction from the sample's
    generator. Items: target_mean / target_std / source_mean (C x h x w) and instruction."""

    def __init__(self, dataset: PairDataset, cache: LatentCache, keys: list[str]):
        self.dataset = dataset
        self.cache = cache
        self.keys = keys
        self.plan_counts = cache.read_index(keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        rng = self.dataset.sample_rng(epoch, index)
        count = self.plan_counts[index]
        plan = int(rng.integers(0, count)) if count > 1 else 0
        tensors, locations = self.cache.read(self.keys[index], plan)
        instruction = self.dataset.instruction(index, rng, locations[plan])
        return {**tensors, "instruction": instruction}


def collate_latents(items: list[dict]) -> dict:
    import torch

    out: dict = {name: torch.stack([it[name] for it in items]) for name in TENSORS}
    out["instructions"] = [it["instruction"] for it in items]
    return out

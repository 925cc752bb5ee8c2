"""What every stage function shares: its result type, progress reporting, config fingerprints."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pbi_ml.storage import Storage
from pbi_ml.tables import PAIRS

Progress = Callable[[int, int], None]  # (done, total)


@dataclass
class StageResult:
    """What a stage function returns: the table it wrote, where, and numbers worth showing."""

    table: pa.Table
    path: Path | None
    counts: Mapping[str, float] = field(default_factory=dict)  # ints and floats worth showing
    samples: list[tuple[str, np.ndarray]] = field(default_factory=list)  # (caption, image) previews
    extra: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why a stage had nothing to do (empty is not failure)


def _json_digest(value: Any, digest_size: int) -> str:
    blob = json.dumps(value, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=digest_size).hexdigest()


def fingerprint(config, exclude: tuple[str, ...] = ()) -> str:
    """A short stable hash of a config dataclass (fields in `exclude` do not change results)."""
    return _json_digest({k: v for k, v in dataclasses.asdict(config).items() if k not in exclude}, 6)


def fingerprint_of(*values: Any) -> str:
    """A short stable digest of JSON-serialisable values (rows, texts, lists): item upstreams."""
    return _json_digest(values, 8)


class ProgressReporter:
    """Calls `progress(done, total)` at most every `interval` seconds (and at the end)."""

    def __init__(self, total: int, progress: Progress | None, interval: float = 5.0):
        self.total = total
        self.progress = progress
        self.interval = interval
        self.done = 0
        self._last = 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.progress and (now - self._last >= self.interval or self.done >= self.total):
            self._last = now
            self.progress(self.done, self.total)


def batched(items: list, size: int):
    for start in range(0, len(items), max(1, size)):
        yield items[start : start + size]


def chunks_to_run(items: list, size: int, is_finished) -> list[list]:
    """The fixed chunks of `items` (cut every `size` in the given, deterministic order) that hold
    at least one unfinished item.

    Model backends batch, and an item's result can depend on which other items share its batch
    (float kernels pick their blocking and reduction order by batch shape; batched generation
    pads to the longest prompt). A stage that runs each of these chunks whole, computing its
    already finished items again and dropping their results, gives after a crash and a re-run
    exactly the bytes of an uninterrupted run, at the cost of at most `size - 1` items per crash.
    """
    return [chunk for chunk in batched(items, size) if not all(is_finished(item) for item in chunk)]


def ok_pairs(storage: Storage, source: str, shard: str) -> list[dict]:
    """The pairs rows that the stages after `pairs` take: status ok, in the table's order."""
    return [row for row in storage.read_table(PAIRS, source, shard).to_pylist() if row["status"] == "ok"]

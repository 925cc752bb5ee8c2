"""The `checkpoint` materialization's metadata, built without Dagster.

Two processes build it: the step itself when it trains in process, and rank 0 of an
`accelerate launch` (`pbi_assets.train_entry`), which only has `dagster_pipes`. So the entries are
plain (type, value) pairs here; `to_dagster` and `to_pipes` turn them into either side's form.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pbi_assets.plots import histogram_text, loss_curve_text

Entry = tuple[str, Any]  # (pipes metadata type: "md", "path", "json", "int", "float", "bool", "text"; value)

SMOKE_WARNING = "SMOKE MODEL: tiny random architecture trained a few steps on CPU; not a useful editor."


def checkpoint_metadata(row: dict, counts: Mapping[str, float] | None = None) -> dict[str, Entry]:
    """The metadata of a `checkpoint` materialization from its checkpoints-table row (and the
    stage's counts: latent cache use)."""
    curve = json.loads(row["loss_curve"])
    meta: dict[str, Entry] = {
        "checkpoint_id": ("text", row["checkpoint_id"]),
        "recipe": ("text", row["recipe"]),
        "smoke_model": ("bool", bool(row["smoke_model"])),
        "pipeline_dir": ("path", row["pipeline_dir"]),
        "train_pairs": ("int", int(row["train_pairs"])),
        "steps": ("int", int(row["steps"])),
        "final_loss": ("float", float(row["final_loss"]) if row["final_loss"] is not None else float("nan")),
        "samples_per_second": ("float", float(row["samples_per_second"])),
        "wall_time_s": ("float", float(row["wall_time_s"])),
        "resumed_from_step": ("int", int(row["resumed_from_step"]) if row["resumed_from_step"] is not None else -1),
        "world_size": ("int", int(row.get("world_size") or 1)),
        "effective_batch_size": ("int", int(row.get("effective_batch_size") or 0)),
        "latents": ("text", str(row.get("latents") or "on_the_fly")),
        "loss_curve": ("md", loss_curve_text(curve)),
        "loss_curve_json": ("json", curve),
        "loss_histogram": ("md", histogram_text([loss for _, loss in curve], title="training loss")),
    }
    for name in ("latents_encoded", "latents_reused"):
        if counts and name in counts:
            meta[name] = ("int", int(counts[name]))
    if row["smoke_model"]:
        meta["warning"] = ("text", SMOKE_WARNING)
    return meta


def to_pipes(meta: dict[str, Entry]) -> dict[str, dict]:
    """Metadata in the form `PipesContext.report_asset_materialization` takes."""
    return {name: {"raw_value": value, "type": kind} for name, (kind, value) in meta.items()}

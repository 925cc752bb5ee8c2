"""Pass / reject each removal candidate and choose one per object (docs/method.md#removal-filters).

Only the configured backend's columns decide. Reasons (joined with "+" when several fail):

    hole_too_large_for_inpainter  the hole (hole_radius_px) is wider than the candidate's removal
                             method can fill (ScoringConfig.hole_too_large); the only reason
                             then, as such a candidate is not scored.
    consensus_disagreement   the K candidates disagree (clip_consensus_std / stats_consensus_std
                             above the maximum). Needs K >= 2: with one candidate the score is null
                             and this filter does not apply.
    object_still_present     clip backend: clip_removal_sim above the maximum, unless the paper's
                             exception holds (the region looked like the class before removal,
                             clip_removal_sim_before >= clip_before_min_sim, and the similarity
                             dropped by at least clip_min_sim_drop: another instance of the class
                             is nearby, the removal itself worked).
    boundary_mismatch        stats backend: the fill stands out from its surroundings
                             (stats_boundary_contrast above the maximum).
    edit_too_small           clip: clip_importance_sim above the maximum; stats: stats_change
                             below the minimum.
    smeared_fill             stats backend: the fill is much smoother than its textured
                             surroundings (stats_texture_ratio below the minimum).
    <column>_missing         a score the decision needs is null (e.g. no ring around the mask).

Among the passing candidates exactly one is chosen: the lowest removal score (clip_removal_sim
for clip, stats_boundary_contrast for stats), ties broken by candidate index.
"""

from __future__ import annotations

from pbi_ml import reasons
from pbi_ml.config import ScoringConfig
from pbi_ml.errors import ConfigError


def decide(object_rows: list[dict], config: ScoringConfig) -> list[dict]:
    """One object's K candidate rows with `passed`, `reject_reason` and `chosen` added (new dicts)."""
    if config.backend == "clip":
        check, removal_column = _clip_failures, "clip_removal_sim"
    elif config.backend == "stats":
        check, removal_column = _stats_failures, "stats_boundary_contrast"
    else:
        raise ConfigError(f"scoring backend {config.backend!r} not one of ('stats', 'clip')")

    out = []
    for row in object_rows:
        failures = _hole_failures(row, config) or check(row, config)
        out.append({**row, "passed": not failures, "reject_reason": "+".join(failures) or None, "chosen": False})

    passing = [(row[removal_column], row.get("candidate", i), i) for i, row in enumerate(out) if row["passed"]]
    if passing:
        out[min(passing)[2]]["chosen"] = True
    return out


def _hole_failures(row: dict, config: ScoringConfig) -> list[str]:
    """The hole is wider than the candidate's removal method can fill (such a candidate has no scores)."""
    radius = row.get("hole_radius_px")
    too_large = radius is not None and config.hole_too_large(row.get("method") or "", radius)
    return [reasons.HOLE_TOO_LARGE_FOR_INPAINTER] if too_large else []


def _clip_failures(row: dict, config: ScoringConfig) -> list[str]:
    failures = _missing(row, ("clip_removal_sim", "clip_removal_sim_before", "clip_importance_sim"))
    if failures:
        return failures
    consensus = row.get("clip_consensus_std")
    if consensus is not None and consensus > config.clip_max_consensus_std:
        failures.append("consensus_disagreement")
    after, before = row["clip_removal_sim"], row["clip_removal_sim_before"]
    if after > config.clip_max_removal_sim:
        another_instance_nearby = before >= config.clip_before_min_sim and before - after >= config.clip_min_sim_drop
        if not another_instance_nearby:
            failures.append("object_still_present")
    if row["clip_importance_sim"] > config.clip_max_importance_sim:
        failures.append("edit_too_small")
    return failures


def _stats_failures(row: dict, config: ScoringConfig) -> list[str]:
    failures = _missing(row, ("stats_boundary_contrast", "stats_change"))
    if failures:
        return failures
    consensus = row.get("stats_consensus_std")
    if consensus is not None and consensus > config.stats_max_consensus_std:
        failures.append("consensus_disagreement")
    if row["stats_boundary_contrast"] > config.stats_max_boundary_contrast:
        failures.append("boundary_mismatch")
    if row["stats_change"] < config.stats_min_change:
        failures.append("edit_too_small")
    texture = row.get("stats_texture_ratio")
    if texture is not None and texture < config.stats_min_texture_ratio:
        failures.append("smeared_fill")
    return failures


def _missing(row: dict, columns: tuple[str, ...]) -> list[str]:
    return [f"{name}_missing" for name in columns if row.get(name) is None]

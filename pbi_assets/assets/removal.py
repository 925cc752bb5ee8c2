"""Removal: score each candidate against its class, inpaint it K times, score the candidates, blend
the chosen one into a pair."""

from pbi_assets.assets.sources import candidates
from pbi_assets.assets.stage_asset import StageAsset, stage_asset
from pbi_ml.config import ArtifactAuditConfig, ClassFilterConfig, PairConfig, RemovalConfig, ScoringConfig
from pbi_ml.stages.artifact_audit import run_artifact_audit
from pbi_ml.stages.class_scores import run_class_scores
from pbi_ml.stages.pairs import run_pairs
from pbi_ml.stages.removals import run_removals
from pbi_ml.stages.scores import run_scores
from pbi_ml.tables import ARTIFACT_AUDIT, CLASS_SCORES, PAIRS, REMOVAL_SCORES, REMOVALS


def _class_filter_note(result, config: ClassFilterConfig) -> dict:
    if config.backend == "off":
        return {"filter": "skipped: no CLIP weights (class_scores.backend: off); set backend: clip to apply it"}
    return {}


class_scores = stage_asset(
    StageAsset(
        name=CLASS_SCORES.name,
        run=run_class_scores,
        config_class=ClassFilterConfig,
        group="sources",
        deps=[candidates],
        model=True,
        progress="objects scored against their class",
        histograms={"clip_class_sim": "CLIP sim(isolated object, class)"},
        extra_metadata=_class_filter_note,
    )
)

removals = stage_asset(
    StageAsset(
        name=REMOVALS.name,
        run=run_removals,
        config_class=RemovalConfig,
        group="removal",
        deps=[class_scores],
        model=True,
        progress="objects inpainted",
    )
)

removal_scores = stage_asset(
    StageAsset(
        name=REMOVAL_SCORES.name,
        run=run_scores,
        config_class=ScoringConfig,
        group="removal",
        deps=[removals],
        model=True,
        progress="objects scored",
        histograms={
            "stats_consensus_std": "pixel std across candidates (stats)",
            "stats_boundary_contrast": "region vs surroundings contrast (stats)",
            "stats_texture_ratio": "texture inside / around the fill (stats; low = smear)",
            "clip_removal_sim": "CLIP sim(region, class) after removal",
            "clip_consensus_std": "CLIP embedding std across candidates",
        },
    )
)

pairs = stage_asset(
    StageAsset(
        name=PAIRS.name,
        run=run_pairs,
        config_class=PairConfig,
        group="removal",
        deps=[removal_scores],
        progress="pairs made",
        histograms={"area_fraction": "mask area / image area"},
    )
)

artifact_audit = stage_asset(
    StageAsset(
        name=ARTIFACT_AUDIT.name,
        run=run_artifact_audit,
        config_class=ArtifactAuditConfig,
        group="removal",
        deps=[pairs],
        model=True,
        progress="pairs audited",
        histograms={"detectability": "out-of-fold P(source region is inpainted)"},
        extra_metadata=lambda result, config: result.extra,
    )
)

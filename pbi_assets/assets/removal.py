"""Removal: score each candidate against its class, inpaint it K times, score the candidates, blend
the chosen one into a pair."""

from pbi_assets.assets.sources import candidates
from pbi_assets.assets.stage_asset import StageAsset, stage_asset
from pbi_ml.config import ClassFilterConfig, PairConfig, RemovalConfig, ScoringConfig
from pbi_ml.stages.class_scores import run_class_scores
from pbi_ml.stages.pairs import run_pairs
from pbi_ml.stages.removals import run_removals
from pbi_ml.stages.scores import run_scores
from pbi_ml.tables import CLASS_SCORES, PAIRS, REMOVAL_SCORES, REMOVALS


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
        summary=(
            "The paper's third pre-removal filter, before any inpainting: CLIP similarity of each kept "
            "candidate's isolated object with 'a photo of a <class>' (clip_class_sim); under min_class_sim "
            "the object is rejected as low_class_similarity (a blurred or occluded view). Backend `off` "
            "(no weights) skips the filter and says so in every row (clip_class_sim null with the reason); "
            "`clip` is the paper's recipe."
        ),
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
        summary=(
            "num_candidates inpainted candidates per kept object not rejected by class_scores, masks dilated "
            "first. Backend `opencv` (CPU: Telea / Navier-Stokes at several radii) or `diffusers` (the "
            "paper's recipe: an SD inpainting model, 'a photo of a background, a photo of an empty place', "
            "negative 'an object, a <class>', seeds seed+k). Resumable per object."
        ),
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
        summary=(
            "One row per removal candidate with the three filters: consensus across candidates, removal "
            "verification against the class, importance of the edit; then passed / reject_reason / chosen "
            "(the passing candidate with the lowest removal score). Backend `stats` (pixel statistics, "
            "CLIP columns null with the reason) or `clip` (open_clip)."
        ),
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
        summary=(
            "Object-removal pairs: the chosen candidate alpha-blended into the original through the "
            "feathered dilated mask (lossless PNG; outside the dilated mask the object-removed image "
            "equals the original pixel for pixel), the original, the mask, the 3x3 object_location."
        ),
    )
)

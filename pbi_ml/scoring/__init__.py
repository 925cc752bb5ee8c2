"""Filter scores on removal candidates (docs/method.md#removal-filters). Importing this loads no torch."""

from pbi_ml.scoring.base import (
    SCORING_BACKENDS,
    STATS_BACKEND_CLIP_REASON,
    ObjectToScore,
    check_object,
    score_objects,
)
from pbi_ml.scoring.decide import decide
from pbi_ml.tables import CLIP_COLUMNS, SCORE_COLUMNS, SCORE_FIELDS, STATS_COLUMNS

__all__ = [
    "CLIP_COLUMNS",
    "SCORE_COLUMNS",
    "SCORE_FIELDS",
    "SCORING_BACKENDS",
    "STATS_BACKEND_CLIP_REASON",
    "STATS_COLUMNS",
    "ObjectToScore",
    "check_object",
    "decide",
    "score_objects",
]

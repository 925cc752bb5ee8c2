"""Deterministic train/test assignment by image, so no image is ever in both splits."""

from __future__ import annotations

from pbi_ml.config import ProjectConfig, SplitConfig
from pbi_ml.sources.base import stable_hash

HASH_BUCKETS = 10_000
EXCLUDED = "excluded"  # a pair left out of train and test (and the exports)
JUDGE_SCORE_BELOW_MIN = "judge_score_below_min"


def hashed_split(image_id: str, config: SplitConfig) -> str:
    """ "test" for a seeded-hash fraction `test_fraction` of image ids, else "train"."""
    bucket = stable_hash(f"{config.seed}:{image_id}") % HASH_BUCKETS
    return "test" if bucket < config.test_fraction * HASH_BUCKETS else "train"


def test_image_ids(project: ProjectConfig, storage) -> set[str]:
    """Image ids of every role: test source (read from the cached source indexes)."""
    from pbi_ml.sources import load_source_index

    ids: set[str] = set()
    for source in project.sources:
        if source.role == "test":
            column = load_source_index(source, project.num_shards, storage).column("image_id")
            ids.update(i for i in column.to_pylist() if i is not None)
    return ids


def assign_split(source, image_id: str, held_out: set[str], config: SplitConfig) -> tuple[str, str]:
    """(split, rule) for one image of `source` (a SourceConfig)."""
    if source.role == "test":
        return "test", "test_source"
    if image_id in held_out:
        return "test", "image_in_a_test_source"
    if source.test_fraction is not None:
        config = SplitConfig(test_fraction=source.test_fraction, seed=config.seed)
    return hashed_split(image_id, config), "hash"


def judged_out(judge_scores: dict[str, float | None], config: SplitConfig) -> set[str]:
    """The pair ids whose judge score is under `config.min_judge_score` (none when it is unset);
    a pair without a score (judge off, unparsed answer, not judged) is kept."""
    if config.min_judge_score is None:
        return set()
    minimum = config.min_judge_score
    return {pair_id for pair_id, score in judge_scores.items() if score is not None and score < minimum}

"""The splits stage: train or test for every ok pair of the partition.

By image: sources with role: test go to test, an image that appears in any test source goes to
test everywhere, the rest by a seeded hash of the image id (test_fraction, with a per-source
override; 0 plus a role: test source reproduces the paper). Beyond the paper, with
`min_judge_score` set, a pair the pair judge scored under it gets split "excluded" (rule
judge_score_below_min): in neither train nor test nor the exports; an unscored pair is kept.
"""

from __future__ import annotations

from pbi_ml.config import ProjectConfig, SourceConfig, SplitConfig
from pbi_ml.splits import EXCLUDED, JUDGE_SCORE_BELOW_MIN, assign_split, judged_out, test_image_ids
from pbi_ml.stages.common import Progress, StageResult, ok_pairs
from pbi_ml.storage import Storage, table_from_records
from pbi_ml.tables import PAIR_JUDGMENTS, SPLITS


def run_splits(
    storage: Storage,
    source: SourceConfig,
    shard: str,
    config: SplitConfig,
    *,
    project: ProjectConfig,
    progress: Progress | None = None,
) -> StageResult:
    """`project` names the role: test sources, whose images are held out of every other source."""
    pairs = ok_pairs(storage, source.name, shard)
    held_out = test_image_ids(project, storage) if source.role != "test" else set()
    excluded = set()
    if config.min_judge_score is not None:
        judgments = storage.read_table(PAIR_JUDGMENTS, source.name, shard).select(["pair_id", "judge_score"])
        excluded = judged_out({r["pair_id"]: r["judge_score"] for r in judgments.to_pylist()}, config)
    rows = []
    for row in pairs:
        if row["pair_id"] in excluded:
            split, rule = EXCLUDED, JUDGE_SCORE_BELOW_MIN
        else:
            split, rule = assign_split(source, row["image_id"], held_out, config)
        rows.append(
            {
                **{k: row[k] for k in ("pair_id", "source", "shard", "image_id", "annotation_id", "category")},
                "split": split,
                "split_rule": rule,
            }
        )
    table = table_from_records(rows, SPLITS.schema)
    path = storage.write_table(SPLITS, source.name, shard, table)
    counts = {
        "pairs": len(rows),
        "train": sum(r["split"] == "train" for r in rows),
        "test": sum(r["split"] == "test" for r in rows),
        EXCLUDED: sum(r["split"] == EXCLUDED for r in rows),
    }
    if progress:
        progress(len(rows), len(rows))
    return StageResult(table=table, path=path, counts=counts)

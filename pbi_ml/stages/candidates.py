"""The candidates stage: every instance of the partition, kept or rejected with its reason.

One row per instance, kept or rejected with one reason: path_escapes_root, image_missing,
image_unreadable, image_size_mismatch, invalid_mask, crowd, excluded_class, too_small, too_large,
touches_border. No instance silently disappears.
"""

from __future__ import annotations

from pbi_ml.candidates import filter_candidates, reject_counts
from pbi_ml.config import CandidateConfig, SourceConfig
from pbi_ml.stages.common import Progress, StageResult
from pbi_ml.storage import Storage
from pbi_ml.tables import CANDIDATES, SOURCE_INDEX


def run_candidates(
    storage: Storage, source: SourceConfig, shard: str, config: CandidateConfig, *, progress: Progress | None = None
) -> StageResult:
    index = storage.read_table(SOURCE_INDEX, source.name, shard)
    table = filter_candidates(index, source, config)
    path = storage.write_table(CANDIDATES, source.name, shard, table)
    counts = {"instances": table.num_rows, **reject_counts(table)}
    counts["rejected"] = table.num_rows - counts["kept"]
    if progress:
        progress(table.num_rows, table.num_rows)
    return StageResult(table=table, path=path, counts=counts)

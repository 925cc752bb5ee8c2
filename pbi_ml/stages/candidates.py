"""The candidates stage: every instance of the partition, kept or rejected with its reason."""

from __future__ import annotations

from pbi_ml.candidates import filter_candidates, reject_counts
from pbi_ml.config import CandidateConfig, SourceConfig
from pbi_ml.stages.common import StageResult
from pbi_ml.storage import Storage

STAGE = "candidates"


def run_candidates(storage: Storage, source: SourceConfig, shard: str, config: CandidateConfig) -> StageResult:
    index = storage.read_table("source_index", source.name, shard)
    table = filter_candidates(index, source, config)
    path = storage.write_table(STAGE, source.name, shard, table)
    counts = {"instances": table.num_rows, **reject_counts(table)}
    counts["rejected"] = table.num_rows - counts["kept"]
    return StageResult(table=table, path=path, counts=counts)

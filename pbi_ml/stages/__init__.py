"""Stage functions: one per asset. Each reads the previous stage's Parquet for one partition
(source x shard), does its work, writes its own Parquet and returns a StageResult."""

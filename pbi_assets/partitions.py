"""Partitions: source x shard, read from the project config (pbi.yaml) at code-location load."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from pbi_ml.config import ProjectConfig, project_config

PROJECT: ProjectConfig = project_config()  # the same load the PBIProject resource uses

source_shard_partitions = dg.MultiPartitionsDefinition(
    {
        "source": dg.StaticPartitionsDefinition(PROJECT.source_names),
        "shard": dg.StaticPartitionsDefinition(PROJECT.shard_keys),
    }
)


@dataclass(frozen=True)
class Partition:
    source: str
    shard: str


def partition_of(context) -> Partition:
    """The (source, shard) of an asset or check context, parsed by the partitions definition."""
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        key = source_shard_partitions.get_partition_key_from_str(key)
    dims = key.keys_by_dimension
    return Partition(source=dims["source"], shard=dims["shard"])


def partition_keys_for_source(source: str) -> list[dg.MultiPartitionKey]:
    return [dg.MultiPartitionKey({"source": source, "shard": shard}) for shard in PROJECT.shard_keys]

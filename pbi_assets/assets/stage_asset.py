"""One asset per partitioned pbi_ml stage, built from a `StageAsset` declaration: resolve the
source x shard partition and the stage config (dataclass defaults < pbi.yaml `stages.<name>` < run
config), lease a device for a model, call `run_<stage>(storage, source, shard, config, ...)`, and
turn the result into metadata. Each domain module only declares what differs.
"""

import dataclasses
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg

from pbi_assets.assets.gpu import GPU_POOL, GPU_TAGS, on_a_device
from pbi_assets.execution import stage_op_tags
from pbi_assets.metadata import progress_logger, result_metadata
from pbi_assets.partitions import partition_of, source_shard_partitions
from pbi_assets.resources import PBIProject
from pbi_assets.run_config import stage_run_config
from pbi_ml.config.fields import fields_table
from pbi_ml.plots import markdown_table


@dataclasses.dataclass(frozen=True)
class StageAsset:
    """What one partitioned stage asset is; `stage_asset` builds it."""

    name: str  # the asset key, the stage's table name and its `stages:` key in pbi.yaml
    run: Callable[..., Any]  # pbi_ml's run_<stage>(storage, source, shard, config, *, progress=None, ...)
    config_class: type  # the stage's config dataclass
    group: str
    deps: Sequence[Any] = ()
    model: bool = False  # a model step: the gpu pool, the GPU tag, a leased device, `backend` in metadata
    progress: str | None = None  # "objects inpainted": a log line per chunk done
    histograms: dict[str, str] = dataclasses.field(default_factory=dict)  # column -> plot title
    examples: Sequence[str] = ()  # columns of the first rows, shown as a markdown table
    # more metadata from the stage's result and config (notes)
    extra_metadata: Callable[[Any, Any], dict[str, Any]] | None = None
    # more keyword arguments of `run` from the project (e.g. the splits' view of every source)
    run_kwargs: Callable[[PBIProject], dict[str, Any]] | None = None


def stage_description(run: Callable[..., Any], config_class: type, name: str) -> str:
    """An asset's description: its pbi_ml stage module's docstring (what the artifact is, which
    backends make it), then its parameters (type, default, meaning) as docs/configuration.md
    lists them, generated from the config dataclass, so a default is written in one place."""
    module = inspect.getdoc(inspect.getmodule(run)) or ""
    return (
        f"{module}\n\nParameters, set in pbi.yaml `stages.{name}` or the run config "
        f"(docs/configuration.md):\n\n{fields_table(config_class)}"
    )


def stage_asset(stage: StageAsset) -> dg.AssetsDefinition:
    """The Dagster asset of a partitioned stage."""
    camel = "".join(word.title() for word in stage.name.split("_"))
    RunConfig = stage_run_config(f"{camel}RunConfig", stage.config_class)  # a class: the annotation below

    @dg.asset(
        name=stage.name,
        partitions_def=source_shard_partitions,
        group_name=stage.group,
        kinds={"pytorch", "parquet"} if stage.model else {"python", "parquet"},
        deps=list(stage.deps),
        pool=GPU_POOL if stage.model else None,
        tags=GPU_TAGS if stage.model else None,
        op_tags=stage_op_tags(stage.name),
        description=stage_description(stage.run, stage.config_class, stage.name),
    )
    def _asset(context: dg.AssetExecutionContext, pbi: PBIProject, config: RunConfig) -> dg.MaterializeResult:  # type: ignore[valid-type]
        part = partition_of(context)
        stage_config = pbi.stage_config(stage.name, stage.config_class, config)
        progress = progress_logger(context, stage.progress) if stage.progress else None
        kwargs = {"progress": progress} if progress else {}
        kwargs.update(stage.run_kwargs(pbi) if stage.run_kwargs else {})
        device_metadata: dict[str, Any] = {}
        if stage.model:
            with on_a_device(context, pbi, stage_config) as step:
                stage_config = step.config
                result = stage.run(pbi.storage(), pbi.source(part.source), part.shard, stage_config, **kwargs)
            device_metadata = step.metadata
        else:
            result = stage.run(pbi.storage(), pbi.source(part.source), part.shard, stage_config, **kwargs)
        meta = result_metadata(result, histograms=stage.histograms)
        meta.update(device_metadata)
        if stage.model:
            meta["backend"] = stage_config.backend
        if stage.examples:
            meta["examples"] = markdown_examples(result.table.to_pylist(), stage.examples)
        if stage.extra_metadata:
            meta.update(stage.extra_metadata(result, stage_config))
        return dg.MaterializeResult(metadata=meta)

    return _asset


def markdown_examples(rows: list[dict], columns: Sequence[str]) -> dg.MetadataValue:
    """The first rows' `columns` as a markdown table (pbi_ml.plots.markdown_table)."""
    return dg.MetadataValue.md(markdown_table(rows, columns))

"""Turning stage results into Dagster metadata: row counts, schemas, thumbnails, histograms (a small
PNG plot above the text histogram, see pbi_assets.plots), the loss curve."""

from __future__ import annotations

import base64

import dagster as dg
import numpy as np
import pyarrow as pa

from pbi_assets.plots import finite_values, histogram_text
from pbi_ml.imageio import thumbnail_png


def table_metadata(table: pa.Table, path=None) -> dict:
    meta = {
        "dagster/row_count": table.num_rows,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(name=f.name, type=str(f.type)) for f in table.schema]
        ),
    }
    if path is not None:
        meta["path"] = dg.MetadataValue.path(str(path))
    return meta


def counts_metadata(counts: dict) -> dict:
    return {k: (float(v) if isinstance(v, float) else int(v)) for k, v in counts.items()}


def thumbnails_markdown(samples: list[tuple[str, np.ndarray]], max_side: int = 128) -> dg.MetadataValue:
    """A few small base64 PNGs inline (a few kB each: metadata lives in the event log)."""
    parts = []
    for caption, image in samples[:4]:
        b64 = base64.b64encode(thumbnail_png(image, max_side)).decode()
        # markdown image syntax: the Dagster UI strips HTML <img> tags from markdown metadata
        label = caption.replace("[", "(").replace("]", ")")
        parts.append(f"**{label}**\n\n![{label}](data:image/png;base64,{b64})")
    return dg.MetadataValue.md("\n\n".join(parts) if parts else "_no samples in this partition_")


def histogram_bins(values, bins: int = 10) -> dict:
    """The histogram's numbers, for JSON metadata: n, bin edges and counts (empty lists without values)."""
    finite = finite_values(values)
    if finite.size == 0:
        return {"n": 0, "edges": [], "counts": []}
    counts, edges = np.histogram(finite, bins=bins)
    return {"n": int(finite.size), "edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def histogram_markdown(values, bins: int = 10, title: str = "") -> dg.MetadataValue:
    """A small PNG histogram plot (markdown image) above the same histogram as text."""
    return dg.MetadataValue.md(histogram_text(values, bins, title))


def result_metadata(result, histograms: dict[str, str] | None = None) -> dict:
    """Everything a StageResult offers, plus histograms of the named columns."""
    meta = table_metadata(result.table, result.path)
    meta.update(counts_metadata(result.counts))
    if result.samples:
        meta["samples"] = thumbnails_markdown(result.samples)
    for column, title in (histograms or {}).items():
        if column in result.table.column_names:
            values = result.table.column(column).to_pylist()
            meta[f"histogram_{column}"] = histogram_markdown(values, title=title)
            meta[f"histogram_{column}_bins"] = dg.MetadataValue.json(histogram_bins(values))
    return meta


def progress_logger(context, what: str):
    """A stage `progress(done, total)` callback that logs to the Dagster run log."""

    def report(done: int, total: int) -> None:
        context.log.info(f"{what}: {done}/{total}")

    return report

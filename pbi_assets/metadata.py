"""Turning stage results into Dagster metadata: row counts, schemas, thumbnails, histograms."""

from __future__ import annotations

import base64

import dagster as dg
import numpy as np
import pyarrow as pa

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


def histogram_markdown(values, bins: int = 10, title: str = "") -> dg.MetadataValue:
    """A text histogram (Dagster metadata has no chart type)."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if values.size == 0:
        return dg.MetadataValue.md(f"{title}: _no values_")
    counts, edges = np.histogram(values, bins=bins)
    peak = max(int(counts.max()), 1)
    lines = [f"{title} (n={values.size})", "```"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
        lines.append(f"{lo:8.4f} – {hi:8.4f} | {'█' * int(round(30 * c / peak)):<30} {c}")
    lines.append("```")
    return dg.MetadataValue.md("\n".join(lines))


def result_metadata(result, histograms: dict[str, str] | None = None) -> dict:
    """Everything a StageResult offers, plus histograms of the named columns."""
    meta = table_metadata(result.table, result.path)
    meta.update(counts_metadata(result.counts))
    if result.samples:
        meta["samples"] = thumbnails_markdown(result.samples)
    for column, title in (histograms or {}).items():
        if column in result.table.column_names:
            meta[f"histogram_{column}"] = histogram_markdown(result.table.column(column).to_pylist(), title=title)
    return meta


def progress_logger(context, what: str):
    """A stage `progress(done, total)` callback that logs to the Dagster run log."""

    def report(done: int, total: int) -> None:
        context.log.info(f"{what}: {done}/{total}")

    return report

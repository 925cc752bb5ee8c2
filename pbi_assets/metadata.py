"""Stage results as Dagster metadata: row counts, schemas, thumbnails, histograms (pbi_ml.plots)."""

from __future__ import annotations

from typing import Any

import dagster as dg
import pyarrow as pa

from pbi_ml.plots import histogram_bins, histogram_text, thumbnails_text


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


def thumbnails_markdown(samples: list[tuple[str, Any]], max_side: int = 128, limit: int = 4) -> dg.MetadataValue:
    return dg.MetadataValue.md(thumbnails_text(samples, max_side, limit))


def result_metadata(result, histograms: dict[str, str] | None = None) -> dict:
    """Everything a StageResult offers, plus histograms of the named columns."""
    meta = table_metadata(result.table, result.path)
    meta.update({k: (float(v) if isinstance(v, float) else int(v)) for k, v in result.counts.items()})
    if result.samples:
        meta["samples"] = thumbnails_markdown(result.samples)
    for column, title in (histograms or {}).items():
        if column in result.table.column_names:
            values = result.table.column(column).to_pylist()
            meta[f"histogram_{column}"] = dg.MetadataValue.md(histogram_text(values, title=title))
            meta[f"histogram_{column}_bins"] = dg.MetadataValue.json(histogram_bins(values))
    return meta


def progress_logger(context, what: str):
    """A stage `progress(done, total)` callback that logs to the Dagster run log."""

    def report(done: int, total: int) -> None:
        context.log.info(f"{what}: {done}/{total}")

    return report

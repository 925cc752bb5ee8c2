"""Plots in the Dagster UI: score histograms and the loss curve as small PNGs in markdown metadata
(markdown image syntax; the UI strips HTML <img>), the numbers kept beside them."""

from __future__ import annotations

import base64
import io
import re

import pytest
from PIL import Image

from pbi_ml import plots
from tests.support.pipeline_helpers import metadata_of

PNG = re.compile(r"!\[[^\]]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")
MAX_PNG_BYTES = 20_000


def _pngs(markdown: str) -> list[Image.Image]:
    images = []
    for b64 in PNG.findall(markdown):
        data = base64.b64decode(b64)
        assert len(data) < MAX_PNG_BYTES, len(data)
        image = Image.open(io.BytesIO(data))
        image.load()
        assert image.format == "PNG"
        images.append(image)
    return images


@pytest.fixture(scope="module")
def demo(demo_run):
    root, partitioned, unpartitioned = demo_run
    assert all(r.success for r in partitioned) and unpartitioned.success
    return partitioned, unpartitioned


def test_candidates_area_histogram_is_a_small_png_with_its_numbers(demo):
    partitioned, _ = demo
    found = 0
    for result in partitioned:
        meta = metadata_of(result, "candidates")
        if "histogram_area_fraction" not in meta or "_no values_" in meta["histogram_area_fraction"]:
            continue
        (image,) = _pngs(meta["histogram_area_fraction"])
        assert image.width <= 400 and image.height <= 300
        assert "```" in meta["histogram_area_fraction"], "the text histogram stays under the plot"
        bins = meta["histogram_area_fraction_bins"]
        assert sum(bins["counts"]) == bins["n"] == meta["dagster/row_count"]
        assert len(bins["edges"]) == len(bins["counts"]) + 1
        found += 1
    assert found, "the demo has candidates in some shard"


def test_removal_scores_histograms_are_pngs(demo):
    partitioned, _ = demo
    plots = [
        value
        for result in partitioned
        for key, value in metadata_of(result, "removal_scores").items()
        if key.startswith("histogram_") and not key.endswith("_bins") and "_no values_" not in value
    ]
    assert plots and all(len(_pngs(value)) == 1 for value in plots)


def test_checkpoint_loss_curve_is_a_small_png_with_the_numbers(demo):
    _, unpartitioned = demo
    meta = metadata_of(unpartitioned, "checkpoint")
    (curve,) = _pngs(meta["loss_curve"])
    assert curve.size[0] <= 400
    assert re.search(r"step +\d+  loss \d+\.\d{5}", meta["loss_curve"]), "the numbers stay under the plot"
    assert len(_pngs(meta["loss_histogram"])) == 1
    assert isinstance(meta["final_loss"], float)


def test_a_failing_plot_keeps_the_text(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no backend")

    monkeypatch.setattr(plots, "histogram_png", broken)  # what every histogram in the metadata draws with
    value = plots.histogram_text([0.1, 0.2, 0.3], title="t")
    assert "plot unavailable: RuntimeError: no backend" in value and "t (n=3)" in value
    assert not PNG.search(value)
    assert plots.histogram_text([None, float("nan")], title="t") == "t: _no values_"
    assert plots.histogram_bins([]) == {"n": 0, "edges": [], "counts": []}
    assert plots.loss_curve_text([]) == "training loss: _no steps_"


def test_pair_judgments_metadata_has_the_score_histogram_and_the_lowest_scored_table(demo):
    partitioned, _ = demo
    metas = [metadata_of(result, "pair_judgments") for result in partitioned]
    assert all(meta["backend"] == "off" for meta in metas)
    # the embedded default scores nothing: an empty histogram and a table of no rows, saying so
    assert all("_no values_" in meta["histogram_judge_score"] for meta in metas)
    assert all(
        meta["lowest_scored"].splitlines()[0] == "| judge_score | category | instruction | judge_reason |"
        for meta in metas
    )
    assert all(len(meta["lowest_scored"].splitlines()) == 2 for meta in metas)


def test_markdown_table_lists_the_first_rows_cut_and_escaped():
    rows = [{"a": "x|y", "b": None}, {"a": "z" * 100, "b": 2.5}, {"a": "w", "b": 1}]
    lines = plots.markdown_table(rows, ["a", "b"], n=2).splitlines()
    assert lines == ["| a | b |", "|---|---|", "| x/y |  |", f"| {'z' * 80} | 2.5 |"]

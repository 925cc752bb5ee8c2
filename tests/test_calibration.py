"""Threshold calibration: a labelling sheet from real removals, and the plateau rule."""

from __future__ import annotations

import pandas as pd

from pbi_assets.partitions import PROJECT
from pbi_ml.calibration import plateau_threshold, sample_for_labelling, threshold_curve
from pbi_ml.storage import Storage


def test_sample_writes_a_labelling_sheet_of_real_removals(demo_run, tmp_path):
    root, *_ = demo_run
    out = sample_for_labelling(PROJECT, Storage(root), tmp_path / "calib", n=10, seed=0)
    labels = pd.read_csv(out / "labels.csv")
    assert len(labels) == 10 and labels["label"].isna().all()
    assert {"sample_id", "removal_image", "stats_boundary_contrast", "stats_texture_ratio"} <= set(labels.columns)
    sheet = (out / "sheet.html").read_text()
    assert sheet.count("data:image/png;base64") == 20  # original + removal per row
    again = sample_for_labelling(PROJECT, Storage(root), tmp_path / "again", n=10, seed=0)
    assert (again / "labels.csv").read_bytes() == (out / "labels.csv").read_bytes()


def test_plateau_threshold_finds_where_success_stops_improving():
    # success is certain below 0.1, a coin flip above: the plateau ends at 0.1
    values = [i / 100 for i in range(1, 31)]
    labels = pd.DataFrame(
        {"stats_boundary_contrast": values, "label": [1 if v <= 0.1 else (i % 2) for i, v in enumerate(values)]}
    )
    curve = threshold_curve(labels, "stats_boundary_contrast")
    assert curve["success_rate"].iloc[0] == 1.0 and curve["success_rate"].iloc[-1] < 0.8
    assert plateau_threshold(curve, tolerance=0.0, min_kept=5) == 0.1
    # a keep-above column runs the other way
    texture = pd.DataFrame({"stats_texture_ratio": values, "label": [1 if v >= 0.2 else 0 for v in values]})
    assert plateau_threshold(threshold_curve(texture, "stats_texture_ratio"), tolerance=0.0, min_kept=5) == 0.2

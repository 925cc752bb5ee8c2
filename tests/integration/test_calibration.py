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


def test_fit_plots_success_and_filtered_fraction_next_to_labels_csv(tmp_path, capsys):
    from PIL import Image

    from pbi_assets.cli import main

    values = [i / 100 for i in range(1, 31)]
    labels = pd.DataFrame(
        {"stats_boundary_contrast": values, "label": [1 if v <= 0.1 else (i % 2) for i, v in enumerate(values)]}
    )
    labels.to_csv(tmp_path / "labels.csv", index=False)
    assert main(["calibrate", "fit", str(tmp_path / "labels.csv"), "--column", "stats_boundary_contrast"]) == 0
    png = tmp_path / "stats_boundary_contrast.png"
    assert f"plot: {png}" in capsys.readouterr().out
    with Image.open(png) as im:
        im.load()
        assert im.format == "PNG" and im.width > 400 and im.height > 200


def test_sheet_embeds_the_csv_cells_for_its_download(demo_run, tmp_path):
    """The page's download writes back the embedded cells: they are labels.csv's, row for row."""
    import json
    import re

    root, *_ = demo_run
    out = sample_for_labelling(PROJECT, Storage(root), tmp_path / "calib", n=5, seed=1)
    sheet = (out / "sheet.html").read_text()
    payload = re.search(r"<script type='application/json' id='pbi-data'>(.*?)</script>", sheet, re.S)
    assert payload is not None
    data = json.loads(payload.group(1))
    csv_lines = (out / "labels.csv").read_text().splitlines()
    assert ",".join(data["header"]) == csv_lines[0] and len(data["rows"]) == len(csv_lines) - 1 == 5
    assert sheet.count("data-label='1'") == sheet.count("data-label='0'") == 5

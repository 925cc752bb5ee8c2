"""Calibrating the removal-filter thresholds on hand-labelled removals.

The paper set its thresholds on 500 hand-labelled removals, "at the point where the success rate
plateaus", and did not publish them. This module does the same for any score column:

1. `sample_for_labelling` draws a seeded sample of removal candidates and writes `labels.csv`
   (one row per candidate, an empty `label` column) and `sheet.html` (the original object and the
   removal side by side, so a person can fill in 1 = object fully removed, 0 = not).
2. `threshold_curve` turns the labelled CSV into (threshold, kept fraction, success rate) rows
   for one score column, and `plateau_threshold` picks the most permissive threshold whose success
   rate is within a tolerance of the best one.

`pbi calibrate sample` and `pbi calibrate fit` run both from the command line.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np
import pandas as pd

from pbi_ml.catalog import read_view
from pbi_ml.config import ProjectConfig
from pbi_ml.errors import ConfigError, ItemError
from pbi_ml.imageio import load_rgb, load_rgb_path, thumbnail_png
from pbi_ml.masks import crop_box
from pbi_ml.storage import Storage, atomic_write_bytes
from pbi_ml.tables import CANDIDATES, REMOVAL_SCORES

# which side of the threshold a candidate must be on to pass
KEEP_BELOW = {
    "clip_consensus_std",
    "clip_removal_sim",
    "clip_importance_sim",
    "stats_consensus_std",
    "stats_boundary_contrast",
}
KEEP_ABOVE = {"stats_change", "stats_texture_ratio"}
# the ScoringConfig field each column's threshold lives in (stages.removal_scores in pbi.yaml)
THRESHOLD_FIELDS = {
    "clip_consensus_std": "clip_max_consensus_std",
    "clip_removal_sim": "clip_max_removal_sim",
    "clip_importance_sim": "clip_max_importance_sim",
    "stats_consensus_std": "stats_max_consensus_std",
    "stats_boundary_contrast": "stats_max_boundary_contrast",
    "stats_change": "stats_min_change",
    "stats_texture_ratio": "stats_min_texture_ratio",
}
LABEL_COLUMNS = ["sample_id", "source", "annotation_id", "category", "candidate", "removal_image"]


def sample_for_labelling(
    project: ProjectConfig, storage: Storage, out_dir: str | Path, n: int = 500, seed: int = 0
) -> Path:
    """Write labels.csv and sheet.html for a seeded sample of `n` removal candidates; returns out_dir."""
    scores = read_view(storage, REMOVAL_SCORES.name, where="status = 'ok'").to_pandas()
    if scores.empty:
        raise ValueError("no removal scores yet: materialize removal_scores first")
    candidates = read_view(storage, CANDIDATES.name).to_pandas()[
        ["source", "annotation_id", "image_file", "bbox_x", "bbox_y", "bbox_w", "bbox_h"]
    ]
    sample = scores.sample(n=min(n, len(scores)), random_state=seed).merge(candidates, on=["source", "annotation_id"])
    sample = sample.sort_values(["source", "annotation_id", "candidate"]).reset_index(drop=True)
    sample.insert(
        0,
        "sample_id",
        [f"{s}/{a}/{c}" for s, a, c in zip(sample.source, sample.annotation_id, sample.candidate, strict=True)],
    )
    score_columns = sorted((KEEP_BELOW | KEEP_ABOVE) & set(sample.columns))
    out = Path(out_dir)
    table = sample[LABEL_COLUMNS + score_columns].copy()
    table["label"] = ""
    atomic_write_bytes(out / "labels.csv", table.to_csv(index=False).encode())
    atomic_write_bytes(out / "sheet.html", _sheet(project, sample).encode())
    return out


def _sheet(project: ProjectConfig, sample: pd.DataFrame) -> str:
    rows = []
    for row in sample.to_dict("records"):
        sample_id = html.escape(str(row["sample_id"]))
        try:
            original = load_rgb(project.source(row["source"]).images, row["image_file"])
            removed = load_rgb_path(row["removal_image"])
        except (ItemError, ConfigError) as exc:
            rows.append(f"<tr><td>{sample_id}</td><td colspan=2>unreadable: {html.escape(str(exc))}</td></tr>")
            continue
        bbox = (row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"])
        x0, y0, x1, y1 = crop_box(bbox, original.shape, pad=0.5)
        cells = [_img(original[y0:y1, x0:x1]), _img(removed[y0:y1, x0:x1])]
        rows.append(
            f"<tr><td>{sample_id}<br/>{html.escape(str(row['category']))}</td>"
            + "".join(f"<td>{c}</td>" for c in cells)
            + "</tr>"
        )
    return (
        "<!doctype html><meta charset='utf-8'><title>PBI removal labelling</title>"
        "<p>For each row write 1 in the <code>label</code> column of labels.csv when the object is fully "
        "removed and the fill looks like plausible background, else 0.</p>"
        "<table border=1 cellpadding=4><tr><th>sample_id</th><th>original</th><th>removal</th></tr>"
        + "\n".join(rows)
        + "</table>"
    )


def _img(image: np.ndarray) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(thumbnail_png(image, 192)).decode()}'/>"


def threshold_curve(labels: pd.DataFrame, column: str) -> pd.DataFrame:
    """For each distinct value of `column` as threshold: how many labelled candidates pass, the kept
    fraction, and the success rate (share labelled 1) among those kept."""
    if column not in KEEP_BELOW | KEEP_ABOVE:
        raise ConfigError(f"no threshold direction known for {column!r}; one of {sorted(KEEP_BELOW | KEEP_ABOVE)}")
    missing = {column, "label"} - set(labels.columns)
    if missing:
        raise ValueError(f"the labels table has no column(s) {sorted(missing)}; it has {list(labels.columns)}")
    data = labels[[column, "label"]].dropna()
    data = data[data["label"].astype(str).str.strip() != ""]
    if data.empty:
        raise ValueError(f"no labelled rows with a value in {column!r}")
    values = data[column].astype(float).to_numpy()
    good = data["label"].astype(float).to_numpy() > 0.5
    rows = []
    for threshold in np.unique(values):
        kept = values <= threshold if column in KEEP_BELOW else values >= threshold
        rows.append(
            {
                "threshold": float(threshold),
                "kept": int(kept.sum()),
                "kept_fraction": float(kept.mean()),
                "success_rate": float(good[kept].mean()),
            }
        )
    return pd.DataFrame(rows)


def plateau_threshold(curve: pd.DataFrame, tolerance: float = 0.02, min_kept: int = 10) -> float:
    """The most permissive threshold (largest kept fraction) whose success rate is within
    `tolerance` of the best success rate among thresholds keeping at least `min_kept` candidates."""
    usable = curve[curve["kept"] >= min(min_kept, int(curve["kept"].max()))]
    best = usable["success_rate"].max()
    plateau = usable[usable["success_rate"] >= best - tolerance]
    return float(plateau.sort_values(["kept_fraction", "threshold"]).iloc[-1]["threshold"])

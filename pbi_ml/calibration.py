"""Calibrating the removal-filter thresholds on hand-labelled removals.

The paper set its thresholds on 500 hand-labelled removals, "at the point where the success rate
plateaus", and did not publish them. This module does the same for any score column:

1. `sample_for_labelling` draws a seeded sample of removal candidates and writes `labels.csv`
   (one row per candidate, an empty `label` column) and `sheet.html`: a self-contained labelling
   page (open it with file://, no server) showing the original object and the removal side by side.
   A person labels each row with a click or the keys 1 (object fully removed) / 0 (not), and the
   page's "Download labels.csv" button saves labels.csv again with the label column filled (the
   same bytes as the written file but for the labels; the labels also survive a reload, in the
   browser's localStorage). Filling the label column of labels.csv by hand still works.
2. `threshold_curve` turns the labelled CSV into (threshold, kept fraction, success rate) rows
   for one score column, `plateau_threshold` picks the most permissive threshold whose success
   rate is within a tolerance of the best one, and `plot_threshold_curve` draws both (matplotlib,
   Agg) with the plateau and the chosen threshold marked.

`pbi calibrate sample` and `pbi calibrate fit` run both from the command line.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
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
CLIP_RECALIBRATE = (
    "note: CLIP now sees each region padded to a square and cleaned class names; the CLIP thresholds "
    "(min_class_sim 0.20, clip_max_removal_sim 0.28, clip_max_consensus_std 0.15) are to be recalibrated "
    "on labels scored this way"
)
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
    labels_csv = table.to_csv(index=False, lineterminator="\n")
    atomic_write_bytes(out / "labels.csv", labels_csv.encode())
    atomic_write_bytes(out / "sheet.html", _sheet(project, sample, labels_csv).encode())
    return out


def _sheet(project: ProjectConfig, sample: pd.DataFrame, labels_csv: str) -> str:
    """The labelling page: one row per line of labels.csv, in the same order; the CSV's cells are
    embedded as strings, so the page's download writes them back unchanged but for the labels."""
    header, *cells = list(csv.reader(io.StringIO(labels_csv, newline="")))
    if len(cells) != len(sample):
        raise AssertionError(f"labels.csv has {len(cells)} rows for a sample of {len(sample)}")
    rows = []
    for i, row in enumerate(sample.to_dict("records")):
        sample_id = html.escape(str(row["sample_id"]))
        described = f"<td class='id'>{sample_id}<br/>{html.escape(str(row['category']))}</td>"
        try:
            original = load_rgb(project.source(row["source"]).images, row["image_file"])
            removed = load_rgb_path(row["removal_image"])
        except (ItemError, ConfigError) as exc:
            images = f"<td colspan=2>unreadable: {html.escape(str(exc))}</td>"
        else:
            bbox = (row["bbox_x"], row["bbox_y"], row["bbox_w"], row["bbox_h"])
            x0, y0, x1, y1 = crop_box(bbox, original.shape, pad=0.5)
            images = f"<td>{_img(original[y0:y1, x0:x1])}</td><td>{_img(removed[y0:y1, x0:x1])}</td>"
        buttons = (
            "<td class='label'><button type='button' class='good' data-label='1'>success (1)</button>"
            "<button type='button' class='bad' data-label='0'>failure (0)</button></td>"
        )
        rows.append(f"<tr data-row='{i}'><td class='n'>{i + 1}</td>{described}{images}{buttons}</tr>")
    data = {
        "key": "pbi-calibration:" + hashlib.sha256(labels_csv.encode()).hexdigest()[:16],
        "header": header,
        "rows": cells,
    }
    # inside <script>, "<" could close the element: JSON allows it escaped
    payload = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        _PAGE_HEAD
        + "<table><thead><tr><th>#</th><th>sample</th><th>original</th><th>removal</th><th>label</th></tr></thead>"
        + "<tbody>\n"
        + "\n".join(rows)
        + "\n</tbody></table>\n"
        + f"<script type='application/json' id='pbi-data'>{payload}</script>\n"
        + f"<script>{_PAGE_SCRIPT}</script>\n"
    )


_PAGE_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>PBI removal labelling</title>
<style>
body { font-family: sans-serif; margin: 0 1em 2em; }
#bar { position: sticky; top: 0; background: #fff; padding: .5em 0; border-bottom: 1px solid #ccc; z-index: 1; }
#progress { font-weight: bold; margin-right: 1em; }
table { border-collapse: collapse; margin-top: .5em; }
td, th { border: 1px solid #ccc; padding: 4px; vertical-align: middle; }
td.id { font-size: 80%; max-width: 16em; word-break: break-all; }
tr.focused { outline: 3px solid #1565c0; outline-offset: -3px; }
tr.labelled-1 td.label { background: #c8e6c9; }
tr.labelled-0 td.label { background: #ffcdd2; }
td.label button { display: block; margin: 4px 0; width: 9em; }
tr.labelled-1 button.good, tr.labelled-0 button.bad { font-weight: bold; }
</style></head><body>
<div id="bar"><span id="progress"></span>
<button type="button" id="download">Download labels.csv</button>
<span id="storage-note"></span>
<p>Success (key <kbd>1</kbd>) when the object is fully removed and the fill looks like plausible
background, else failure (key <kbd>0</kbd>); each key labels the focused row (outlined) and moves to
the next. <kbd>&darr;</kbd>/<kbd>j</kbd> and <kbd>&uarr;</kbd>/<kbd>k</kbd> move, <kbd>Backspace</kbd>
clears, a click on a row focuses it. Then download labels.csv and run
<code>pbi calibrate fit labels.csv --column ...</code>.</p></div>
"""

# raw: the JavaScript keeps its own \n and \r escapes
_PAGE_SCRIPT = r"""
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("pbi-data").textContent);
  var labelAt = data.header.indexOf("label");
  var idAt = data.header.indexOf("sample_id");
  var trs = Array.prototype.slice.call(document.querySelectorAll("tbody tr[data-row]"));
  var labels = data.rows.map(function (r) { return r[labelAt] === "1" || r[labelAt] === "0" ? r[labelAt] : ""; });
  var storage = null;
  try { storage = window.localStorage; storage.getItem(data.key); } catch (e) { storage = null; }
  if (storage) {
    var saved = {};
    try { saved = JSON.parse(storage.getItem(data.key) || "{}"); } catch (e) { saved = {}; }
    data.rows.forEach(function (r, i) { if (saved[r[idAt]] === "1" || saved[r[idAt]] === "0") labels[i] = saved[r[idAt]]; });
  } else {
    document.getElementById("storage-note").textContent = "(this browser keeps no labels across a reload: download before closing)";
  }
  var focused = 0;
  function save() {
    if (!storage) return;
    var out = {};
    data.rows.forEach(function (r, i) { if (labels[i] !== "") out[r[idAt]] = labels[i]; });
    try { storage.setItem(data.key, JSON.stringify(out)); } catch (e) { /* full or denied: the download still works */ }
  }
  function show(i) {
    trs[i].classList.toggle("labelled-1", labels[i] === "1");
    trs[i].classList.toggle("labelled-0", labels[i] === "0");
    trs[i].setAttribute("data-label", labels[i]);
  }
  function progress() {
    var done = labels.filter(function (l) { return l !== ""; }).length;
    document.getElementById("progress").textContent = done + " / " + labels.length + " labelled";
  }
  function focusRow(i) {
    if (!trs.length) return;
    i = Math.max(0, Math.min(trs.length - 1, i));
    trs[focused].classList.remove("focused");
    trs[focused].removeAttribute("aria-current");
    focused = i;
    trs[i].classList.add("focused");
    trs[i].setAttribute("aria-current", "true");
    trs[i].scrollIntoView({ block: "nearest" });
  }
  function setLabel(i, value) {
    labels[i] = value;
    show(i); progress(); save();
  }
  function cell(v) { return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v; }
  function csvText() {
    var lines = [data.header.map(cell).join(",")];
    data.rows.forEach(function (r, i) {
      var row = r.slice(); row[labelAt] = labels[i];
      lines.push(row.map(cell).join(","));
    });
    return lines.join("\n") + "\n";
  }
  trs.forEach(function (tr, i) {
    show(i);
    tr.addEventListener("click", function (ev) {
      var b = ev.target.closest("button[data-label]");
      if (b) setLabel(i, b.getAttribute("data-label"));
      focusRow(i);
    });
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.ctrlKey || ev.metaKey || ev.altKey || !trs.length) return;
    if (ev.key === "1" || ev.key === "0") { setLabel(focused, ev.key); focusRow(focused + 1); }
    else if (ev.key === "ArrowDown" || ev.key === "j") focusRow(focused + 1);
    else if (ev.key === "ArrowUp" || ev.key === "k") focusRow(focused - 1);
    else if (ev.key === "Backspace" || ev.key === "Delete") setLabel(focused, "");
    else return;
    ev.preventDefault();
  });
  document.getElementById("download").addEventListener("click", function () {
    var url = URL.createObjectURL(new Blob([csvText()], { type: "text/csv" }));
    var a = document.createElement("a");
    a.href = url; a.download = "labels.csv";
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(function () { URL.revokeObjectURL(url); }, 10000);
  });
  progress();
  var first = labels.indexOf("");
  focusRow(first < 0 ? 0 : first);
})();
"""


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
    plateau = curve[_plateau_mask(curve, tolerance, min_kept)]
    return float(plateau.sort_values(["kept_fraction", "threshold"]).iloc[-1]["threshold"])


def _plateau_mask(curve: pd.DataFrame, tolerance: float, min_kept: int) -> pd.Series:
    """The curve's rows on the plateau: enough kept, success rate within `tolerance` of the best."""
    usable = curve["kept"] >= min(min_kept, int(curve["kept"].max()))
    best = curve.loc[usable, "success_rate"].max()
    return usable & (curve["success_rate"] >= best - tolerance)


def fit_report(labels_csv: str | Path, column: str, tolerance: float = 0.02) -> list[str]:
    """What `pbi calibrate fit` prints: the success rate against the threshold of `column` on the
    labelled sample, the plateau threshold, the pbi.yaml line that sets it, and the plot it wrote."""
    curve = threshold_curve(pd.read_csv(labels_csv), column)
    threshold = plateau_threshold(curve, tolerance=tolerance)
    plot = plot_threshold_curve(curve, column, threshold, plot_path(labels_csv, column), tolerance)
    return [
        curve.iloc[:: max(1, len(curve) // 25)].to_string(index=False),
        f"\nplateau threshold for {column}: {threshold:.4g}",
        f"set it in pbi.yaml:  stages: {{removal_scores: {{{THRESHOLD_FIELDS[column]}: {threshold:.4g}}}}}",
        f"plot: {plot}",
        *([CLIP_RECALIBRATE] if column.startswith("clip_") else []),
    ]


def plot_path(labels_csv: str | Path, column: str) -> Path:
    """Where `pbi calibrate fit` writes the plot for `column`: next to labels.csv, as <column>.png."""
    return Path(labels_csv).parent / f"{column}.png"


def plot_threshold_curve(
    curve: pd.DataFrame,
    column: str,
    threshold: float,
    out: str | Path,
    tolerance: float = 0.02,
    min_kept: int = 10,
) -> Path:
    """Plot the success rate and the filtered fraction (1 - kept fraction) against the threshold,
    with the plateau and the chosen threshold marked, to the PNG `out`; returns its path.

    matplotlib is imported here, and draws with its Agg canvas directly (no pyplot, no global
    backend switch), so importing this module and running the pipeline never load it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    plateau = _plateau_mask(curve, tolerance, min_kept)
    chosen = curve[curve["threshold"] == threshold]
    direction = "kept when ≤ threshold" if column in KEEP_BELOW else "kept when ≥ threshold"
    figure = Figure(figsize=(7, 4.2), dpi=120)
    FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    ax.plot(curve["threshold"], curve["success_rate"], marker=".", color="tab:green", label="success rate (kept)")
    ax.plot(curve["threshold"], 1.0 - curve["kept_fraction"], marker=".", color="tab:red", label="filtered fraction")
    ax.scatter(
        curve.loc[plateau, "threshold"],
        curve.loc[plateau, "success_rate"],
        s=60,
        facecolors="none",
        edgecolors="tab:green",
        label=f"plateau (within {tolerance:g} of the best)",
        zorder=3,
    )
    ax.axhline(curve.loc[plateau, "success_rate"].max() - tolerance, color="tab:green", linestyle=":", linewidth=1)
    ax.axvline(threshold, color="tab:blue", linestyle="--", label=f"threshold {threshold:.4g}")
    if not chosen.empty:
        row = chosen.iloc[0]
        low, high = float(curve["threshold"].min()), float(curve["threshold"].max())
        right_half = high > low and threshold > (low + high) / 2  # then the note goes left of the line
        ax.annotate(
            f"success {row['success_rate']:.0%}, filters {1.0 - row['kept_fraction']:.0%}",
            xy=(threshold, float(row["success_rate"])),
            xytext=(-8 if right_half else 8, -16),
            textcoords="offset points",
            ha="right" if right_half else "left",
            color="tab:blue",
            fontsize=8,
        )
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel(f"{column} threshold ({direction})")
    ax.set_ylabel("fraction")
    ax.set_title(f"{column}: {int(curve['kept'].max())} labelled removals")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(out)
    atomic_write_bytes(path, buffer.getvalue())
    return path

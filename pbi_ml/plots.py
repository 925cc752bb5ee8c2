"""Small PNG plots for run metadata (the Dagster assets'): score histograms and the training loss curve.

Dagster metadata has no chart type and lives in the event-log database, so each plot is a small
figure at low dpi, quantised to a few colours and optimised: a few kB, embedded by the caller as a
markdown image (`![title](data:image/png;base64,...)`; the UI strips HTML <img> tags).
matplotlib is imported inside the functions (the code location's import stays light) and draws
with its Agg canvas directly, without pyplot's global state, so plotting is safe in any process.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np

FIGSIZE = (3.2, 1.9)  # inches
DPI = 80  # 256 x 152 px
COLOURS = 16  # palette size after quantisation


def _png(fig) -> bytes:
    """The figure as an optimised palette PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    image = Image.fromarray(rgba[..., :3].copy()).quantize(colors=COLOURS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue()


def _figure(title: str):
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title[:60], fontsize=7)
    ax.tick_params(labelsize=6)
    return fig, ax


def histogram_png(counts: Sequence[int], edges: Sequence[float], title: str = "") -> bytes:
    """A bar chart of a histogram already binned (`edges` has one more entry than `counts`)."""
    edges_a = np.asarray(edges, dtype=float)
    fig, ax = _figure(title)
    ax.bar(edges_a[:-1], np.asarray(counts), width=np.diff(edges_a), align="edge", color="#3b6ea5", edgecolor="white")
    ax.set_ylabel("count", fontsize=6)
    fig.tight_layout(pad=0.3)
    return _png(fig)


def curve_png(xs: Sequence[float], ys: Sequence[float], title: str = "", xlabel: str = "", ylabel: str = "") -> bytes:
    """A line plot (e.g. the loss per training step)."""
    fig, ax = _figure(title)
    ax.plot(np.asarray(xs, dtype=float), np.asarray(ys, dtype=float), color="#3b6ea5", linewidth=1)
    ax.set_xlabel(xlabel, fontsize=6)
    ax.set_ylabel(ylabel, fontsize=6)
    fig.tight_layout(pad=0.3)
    return _png(fig)


def bars_png(
    labels: Sequence[str], values: Sequence[float], title: str = "", lines: dict[str, float] | None = None
) -> bytes:
    """One bar per label (NaN: no bar), with dashed horizontal reference lines (name -> value)."""
    fig, ax = _figure(title)
    positions = np.arange(len(labels))
    ax.bar(positions, np.asarray(values, dtype=float), color="#3b6ea5", edgecolor="white")
    for i, (name, value) in enumerate((lines or {}).items()):
        ax.axhline(value, color=("#888888", "#c0392b")[i % 2], linestyle="--", linewidth=0.8, label=name)
    if lines:
        ax.legend(fontsize=5, loc="lower right")
    ax.set_xticks(positions, [label[-14:] for label in labels], fontsize=5, rotation=45, ha="right")
    fig.tight_layout(pad=0.3)
    return _png(fig)


def markdown_image(title: str, png: bytes) -> str:
    """`png` as an inline markdown image (what the Dagster UI renders in MetadataValue.md)."""
    label = title.replace("[", "(").replace("]", ")")
    return f"![{label}](data:image/png;base64,{base64.b64encode(png).decode()})"


def markdown_table(rows: list[dict], columns: Sequence[str], n: int = 5) -> str:
    """The first `n` rows' `columns` as a markdown table (values cut at 80 characters)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows[:n]:
        lines.append("| " + " | ".join(str(row.get(c) or "").replace("|", "/")[:80] for c in columns) + " |")
    return "\n".join(lines)


def finite_values(values) -> np.ndarray:
    """The values that are neither None nor NaN / inf, as floats."""
    return np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)


def plot_or_note(title: str, draw) -> str:
    """`draw()`'s PNG as a markdown image; a note instead if plotting fails (metadata never fails a step)."""
    try:
        return markdown_image(title, draw())
    except Exception as exc:  # matplotlib missing or broken: keep the text and say why
        return f"_plot unavailable: {type(exc).__name__}: {exc}_"


def histogram_bins(values, bins: int = 10) -> dict:
    """The histogram's numbers, for JSON metadata: n, bin edges and counts (empty lists without values)."""
    finite = finite_values(values)
    if finite.size == 0:
        return {"n": 0, "edges": [], "counts": []}
    counts, edges = np.histogram(finite, bins=bins)
    return {"n": int(finite.size), "edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def histogram_text(values, bins: int = 10, title: str = "") -> str:
    """Markdown: a small PNG histogram plot above the same histogram as text."""
    values = finite_values(values)
    if values.size == 0:
        return f"{title}: _no values_"
    counts, edges = np.histogram(values, bins=bins)
    peak = max(int(counts.max()), 1)
    plot = plot_or_note(title or "histogram", lambda: histogram_png(counts.tolist(), edges.tolist(), title))
    lines = [plot, "", f"{title} (n={values.size})", "```"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:], strict=True):
        lines.append(f"{lo:8.4f} – {hi:8.4f} | {'█' * int(round(30 * c / peak)):<30} {c}")
    lines.append("```")
    return "\n".join(lines)


def loss_curve_text(curve, max_rows: int = 40) -> str:
    """Markdown: the training loss per step, a small PNG line plot above up to `max_rows` (step, loss) rows."""
    if not curve:
        return "training loss: _no steps_"
    steps = [int(s) for s, _ in curve]
    losses = [float(loss) for _, loss in curve]
    plot = plot_or_note("training loss", lambda: curve_png(steps, losses, "training loss", "step", "loss"))
    rows = [
        f"step {s:>6}  loss {loss:.5f}"
        for s, loss in list(zip(steps, losses, strict=True))[:: max(1, len(curve) // max_rows)]
    ]
    return "\n".join([plot, "", "```", *rows, "```"])


def thumbnails_text(samples: list, max_side: int = 128, limit: int = 4) -> str:
    """The first `limit` (caption, image) samples as small inline PNGs under their captions, in
    markdown (a few kB each: metadata lives in the event log)."""
    from pbi_ml.imageio import thumbnail_png

    parts = [
        f"**{caption}**\n\n{markdown_image(caption, thumbnail_png(image, max_side))}"
        for caption, image in samples[:limit]
    ]
    return "\n\n".join(parts) if parts else "_no samples in this partition_"

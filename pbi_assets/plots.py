"""Small PNG plots for Dagster metadata: score histograms and the training loss curve.

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


def markdown_image(title: str, png: bytes) -> str:
    """`png` as an inline markdown image (what the Dagster UI renders in MetadataValue.md)."""
    label = title.replace("[", "(").replace("]", ")")
    return f"![{label}](data:image/png;base64,{base64.b64encode(png).decode()})"

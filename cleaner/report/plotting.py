"""Matplotlib helpers behind the report's figures: figures, histograms, GMM curves, bars.

A module of its own because these know nothing of sidecars or methods; the
figures in :mod:`cleaner.report.figures` choose what to draw and call them.
Matplotlib is imported only when a figure is made, so the text report and
the CLI start without it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cleaner.io.atomic import atomic_path
from cleaner.report.tables import fmt_count

COLOR = {
    "kept": "#2a9d8f",
    "dropped": "#e76f51",
    "failed": "#adb5bd",
    "reliable": "#2a9d8f",
    "quasi": "#e9c46a",
    "noisy": "#e76f51",
    "hist": "#6c8ebf",
}


def new_figure(nrows: int = 1, height: float = 3.4, width: float = 7.2, sharex: bool = False):
    """A matplotlib figure on the Agg canvas, without pyplot's global state
    (so a report never opens a window or changes the caller's backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height * nrows), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, 1, sharex=sharex, squeeze=False)[:, 0]
    for ax in axes:
        ax.grid(True, alpha=0.25)
        ax.set_axisbelow(True)
    return fig, axes


def save_png(fig, out_dir: Path, name: str) -> str:
    """Write a PNG atomically (temp file in the same folder, then rename)."""
    with atomic_path(out_dir / name) as tmp:
        fig.savefig(tmp, format="png")
    return name


def finite_values(x: np.ndarray) -> np.ndarray:
    return x[np.isfinite(x)]


def bin_edges(
    x: np.ndarray, lo: float | None = None, hi: float | None = None, bins: int = 80
) -> np.ndarray:
    lo = float(np.min(x)) if lo is None else lo
    hi = float(np.max(x)) if hi is None else hi
    if hi <= lo:  # one distinct value: give it a visible bin
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def draw_hist(ax, groups, edges, colors, labels, stacked: bool = True, alpha: float = 0.85) -> None:
    """Histograms binned by numpy and drawn as filled steps: one artist per
    group instead of one rectangle per bin, which keeps drawing fast."""
    base = np.zeros(len(edges) - 1)
    for values, color, label in zip(groups, colors, labels, strict=True):
        counts = np.histogram(values, bins=edges)[0].astype(float)
        top = base + counts if stacked else counts
        ax.stairs(
            top,
            edges,
            baseline=base if stacked else 0,
            fill=True,
            color=color,
            alpha=alpha,
            label=label,
        )
        base = top if stacked else base
    ax.set_ylim(bottom=0)


def _normal_pdf(x: np.ndarray, mean: float, sd: float) -> np.ndarray:
    return np.exp(-0.5 * ((x - mean) / sd) ** 2) / (sd * math.sqrt(2 * math.pi))


def draw_gmm(
    ax, gmm: dict | None, edges: np.ndarray, n: int, to_x, scale: float, names=("low", "high")
) -> None:
    """Draw a fitted 2-component GMM as densities scaled to histogram counts.

    The GMM lives on its own scale u; ``to_x`` maps u to the plotted x and
    ``scale`` is dx/du, so a component's count density on x is
    n * bin_width * w * N(u; mean, var) / scale.
    """
    if not gmm or not gmm.get("means") or n == 0:
        return
    xs = np.linspace(edges[0], edges[-1], 400)
    width = edges[1] - edges[0]
    total = np.zeros_like(xs)
    order = np.argsort(gmm["means"])
    for rank, k in enumerate(order):
        mean_x, sd_x = to_x(gmm["means"][k]), math.sqrt(gmm["variances"][k]) * scale
        y = n * width * gmm["weights"][k] * _normal_pdf(xs, mean_x, sd_x)
        total += y
        ax.plot(
            xs,
            y,
            lw=1.6,
            ls="--",
            label=f"GMM {names[rank]}: w {gmm['weights'][k]:.2f}, mean {mean_x:.3f}",
        )
    ax.plot(xs, total, lw=1.2, color="#333333", alpha=0.7, label="GMM mixture")


def draw_bars(ax, names: list[str], values: list[int], colors) -> None:
    """Horizontal bars labelled with their counts; log scale when counts span decades
    (a handful of failures next to millions of ok rows must stay visible)."""
    y = np.arange(len(names))
    ax.barh(y, values, color=colors)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) > 100:
        ax.set_xscale("log")
    for yi, v in zip(y, values, strict=True):
        ax.text(v if v > 0 else 0, yi, f" {fmt_count(v)}", va="center", fontsize=8)
    ax.margins(x=0.15)

"""Summary reports of a sidecar: PNG figures with an ``index.html``, or aligned text.

:func:`build_report` writes one PNG per figure and a self-contained
``index.html`` (inline CSS, no scripts, no external assets; it refers only to
the PNGs and ``shards.csv`` next to it). Given the shards, the page also shows
pairs as inline thumbnails (:mod:`cleaner.report.pair_select`). :func:`text_report` returns the same
counts and key numbers as aligned text for a terminal.

This module only assembles a report from its parts, so callers have one
entry point: reading is in :mod:`cleaner.report.data`, the numbers in
:mod:`cleaner.report.tables` and :mod:`cleaner.report.method_rows`, the
figures in :mod:`cleaner.report.figures`, the layouts in
:mod:`cleaner.report.page` and :mod:`cleaner.report.text`. Counts and means
are exact; histograms and quantiles come from a seeded uniform sample of at
most ``max_sample_rows`` rows, and the page says when it sampled. Only the
sections of the methods the sidecar holds are produced.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from cleaner.errors import ConfigError
from cleaner.io.atomic import write_text
from cleaner.report import DEFAULT_PAIRS, MAX_PAIRS
from cleaner.report.data import (
    MAX_SAMPLE_ROWS,
    ReportData,
    load_report_data,
    read_report_metadata,
    sidecar_files,
)
from cleaner.report.figures import FIGURE_METHODS, FIGURES
from cleaner.report.page import render_html
from cleaner.report.pair_images import load_thumbs
from cleaner.report.pair_page import pairs_html
from cleaner.report.pair_select import select_pairs
from cleaner.report.tables import shard_table
from cleaner.report.text import format_text

# The names callers imported from this module before it was split.
__all__ = [
    "MAX_SAMPLE_ROWS",
    "ReportData",
    "build_report",
    "format_text",
    "load_report_data",
    "read_report_metadata",
    "render_html",
    "sidecar_files",
    "text_report",
]


def text_report(
    sidecar_path: str | Path, max_sample_rows: int = MAX_SAMPLE_ROWS, seed: int = 0
) -> str:
    """Return the terminal report of a sidecar (file or folder of parts)."""
    return format_text(load_report_data(sidecar_path, max_sample_rows=max_sample_rows, seed=seed))


def _shards_csv(d: ReportData) -> str:
    t = shard_table(d, None)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(t.headers)
    for row in t.rows:
        # plain integers for spreadsheets: drop the thousands separators
        w.writerow([row[0]] + [c.replace(",", "") for c in row[1:]])
    return buf.getvalue()


def _pairs(d: ReportData, shards, pairs: int, seed: int) -> str:
    """The Pairs section's HTML: choose the rows, then read only their samples."""
    if isinstance(shards, (str, Path)):
        shards = [shards]
    if not 1 <= pairs <= MAX_PAIRS:
        raise ConfigError(f"pairs per group must be between 1 and {MAX_PAIRS}, not {pairs}")
    sel = select_pairs(d, k=pairs, seed=seed)
    thumbs = load_thumbs(sel.all_picks(), [str(s) for s in shards], d.meta)
    return pairs_html(sel, thumbs, d.params("clipcleaner").get("classes"))


def build_report(
    sidecar_path: str | Path,
    out_dir: str | Path,
    max_sample_rows: int = MAX_SAMPLE_ROWS,
    seed: int = 0,
    shards: str | Path | list | None = None,
    pairs: int = DEFAULT_PAIRS,
) -> Path:
    """Write the figures, ``shards.csv`` and ``index.html`` into ``out_dir``; return index.html's path.

    With ``shards`` (the shard specs that were scored), the page also shows
    ``pairs`` pairs per method and group as thumbnails with their captions
    (:mod:`cleaner.report.pair_select`), reading only those samples.

    Every file is written atomically. Raises InputError for a missing or
    unreadable sidecar or an unknown schema version, ConfigError when
    ``out_dir`` exists as a file or ``shards`` matches nothing.
    """
    d = load_report_data(sidecar_path, max_sample_rows=max_sample_rows, seed=seed)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"report folder {out} exists and is not a folder")
    pairs_block = _pairs(d, shards, pairs, seed) if shards else ""
    out.mkdir(parents=True, exist_ok=True)
    figs = {}
    for name, draw in FIGURES.items():
        if all(m in d.methods for m in FIGURE_METHODS.get(name, ())):
            figs[name] = draw(d, out)
    write_text(out / "shards.csv", _shards_csv(d))
    index = out / "index.html"
    write_text(index, render_html(d, figs, "shards.csv", pairs_block))
    return index

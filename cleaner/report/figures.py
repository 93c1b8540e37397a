"""The report's figures, one PNG each: statuses, each method's distributions, shards.

A module of its own because each figure decides what a method's numbers
should look like (which lines, which groups, which scale); the drawing itself
is in :mod:`cleaner.report.plotting`. :data:`FIGURES` lists them in page
order and :data:`FIGURE_METHODS` says which need which method.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cleaner.report.data import OSA_PEAK, PARTITIONS, ReportData, rule_text
from cleaner.report.plotting import (
    COLOR,
    bin_edges,
    draw_bars,
    draw_gmm,
    draw_hist,
    finite_values,
    new_figure,
    save_png,
)
from cleaner.report.tables import fmt_count, fmt_pct, status_table

MAX_SHARD_BARS = 40  # above this a per-shard bar chart is unreadable: plot the distribution instead


def fig_cosine(d: ReportData, out_dir: Path) -> str | None:
    """Cosine histogram, OSA's beta, SDD's thresholds and SDD's GMM components."""
    x = finite_values(d.sample.get("cosine", np.zeros(0)))
    if not len(x):
        return None
    fig, (ax,) = new_figure()
    edges = bin_edges(x)
    draw_hist(ax, [x], edges, [COLOR["hist"]], ["cosine (ok rows)"], alpha=0.75)
    beta = (d.meta.get("beta") or {}).get("value")
    if beta is not None:
        ax.axvline(beta, color="#d62828", lw=2, label=f"OSA beta = {beta:.4f}")
    if "sdd" in d.methods:
        p = d.params("sdd")
        scale = float(p.get("scale") or 100.0)
        for key, style, what in (("alpha", ":", "SDD alpha"), ("beta_c", "-.", "SDD beta_c")):
            if p.get(key) is not None:
                ax.axvline(
                    p[key] / scale,
                    color="#6a4c93",
                    lw=1.6,
                    ls=style,
                    label=f"{what} = {p[key] / scale:.2f}",
                )
        # the SDD mixture is fitted on scale*cosine: u -> u/scale, sd shrinks by 1/scale
        draw_gmm(ax, p.get("gmm"), edges, len(x), lambda u: u / scale, 1.0 / scale)
    ax.set_xlabel("cosine(image, text)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("Cosine similarity")
    ax.legend(fontsize=8, loc="upper left")
    return save_png(fig, out_dir, "cosine.png")


def fig_osa_weight(d: ReportData, out_dir: Path) -> str | None:
    w = finite_values(d.sample.get("osa_weight", np.zeros(0)))
    if not len(w):
        return None
    fig, (ax,) = new_figure()
    pos = w[w > 0]
    # zero weights would dwarf everything else: state their share instead of drawing them
    draw_hist(ax, [pos], bin_edges(pos, 0.0, OSA_PEAK, 60), [COLOR["kept"]], [None])
    zero = len(w) - len(pos)
    ax.text(
        0.98,
        0.95,
        f"weight 0 (not drawn): {fmt_pct(zero, len(w))} of ok rows",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "#cccccc"},
    )
    ax.set_xlabel("osa_weight (rows with weight > 0)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("OSA weight")
    return save_png(fig, out_dir, "osa_weight.png")


def fig_sdd_w_con(d: ReportData, out_dir: Path) -> str | None:
    w = d.sample.get("sdd_w_con", np.zeros(0))
    keep = d.sample.get("sdd_keep", np.zeros(0, bool))
    fin = np.isfinite(w)
    if not fin.any():
        return None
    fig, (ax,) = new_figure()
    edges = bin_edges(w[fin], 0.0, 1.0, 50)
    labels = [
        f"kept ({fmt_count(d.total('sdd_kept'))})",
        f"dropped ({fmt_count(d.ok_rows - d.total('sdd_kept'))})",
    ]
    draw_hist(ax, [w[fin & keep], w[fin & ~keep]], edges, [COLOR["kept"], COLOR["dropped"]], labels)
    ax.set_xlabel("sdd_w_con (confidence weight)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("SDD confidence weight, by sdd_keep")
    ax.legend(fontsize=8)
    return save_png(fig, out_dir, "sdd_w_con.png")


def fig_sps_loss(d: ReportData, out_dir: Path) -> str | None:
    """SPS per-sample loss, stacked by partition, with the loss GMM's components."""
    loss = d.sample.get("sps_loss", np.zeros(0))
    codes = d.sample.get("sps_partition", np.zeros(0, np.int8))
    fin = np.isfinite(loss)
    if not fin.any():
        return None
    fig, (ax,) = new_figure()
    edges = bin_edges(loss[fin])
    groups = [loss[fin & (codes == i)] for i in range(len(PARTITIONS))]
    labels = [f"{p} ({fmt_count(d.total(f'sps_{p}'))})" for p in PARTITIONS]
    draw_hist(ax, groups, edges, [COLOR[p] for p in PARTITIONS], labels)
    p = d.params("sps")
    if p.get("loss_min") is not None and p.get("loss_max") is not None:
        lo, span = float(p["loss_min"]), float(p["loss_max"]) - float(p["loss_min"])
        # fitted on (loss - min) / span: map means back, widths scale by span
        draw_gmm(
            ax,
            p.get("gmm"),
            edges,
            int(fin.sum()),
            lambda u: lo + u * span,
            span,
            names=("clean", "noisy"),
        )
    ax.set_xlabel("sps_loss (per-sample InfoNCE)")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("SPS loss by partition (legend counts: all rows)")
    ax.legend(fontsize=7)
    return save_png(fig, out_dir, "sps_loss.png")


def fig_cc_quality(d: ReportData, out_dir: Path) -> str | None:
    q = d.sample.get("cc_label_quality", np.zeros(0))
    sel = d.sample.get("clipcleaner_keep", np.zeros(0, bool))  # by its keep rule
    fin = np.isfinite(q)
    if not fin.any():
        return None
    fig, (ax,) = new_figure()
    edges = bin_edges(q[fin], bins=50)
    labels = [
        f"selected ({fmt_count(d.total('clipcleaner_kept'))})",
        f"not selected ({fmt_count(d.ok_rows - d.total('clipcleaner_kept'))})",
    ]
    # overlaid, not stacked: the two shapes are what the eye compares
    draw_hist(
        ax,
        [q[fin & sel], q[fin & ~sel]],
        edges,
        [COLOR["kept"], COLOR["dropped"]],
        labels,
        stacked=False,
        alpha=0.55,
    )
    ax.set_xlabel("cc_label_quality")
    ax.set_ylabel("rows" + (" (sample)" if d.sampled else ""))
    ax.set_title("CLIPCleaner label quality, by cc_selected")
    ax.legend(fontsize=8)
    return save_png(fig, out_dir, "cc_label_quality.png")


def fig_status(d: ReportData, out_dir: Path) -> str | None:
    t = status_table(d)
    if not t.rows:
        return None
    names = [r[0] for r in t.rows]
    fig, (ax,) = new_figure(height=max(1.6, 0.35 * len(names) + 0.9))
    draw_bars(
        ax,
        names,
        [d.status[k] for k in names],
        [COLOR["kept"] if k == "ok" else COLOR["failed"] for k in names],
    )
    ax.set_xlabel("rows")
    ax.set_title("Rows per status")
    return save_png(fig, out_dir, "status.png")


def fig_partitions(d: ReportData, out_dir: Path) -> str | None:
    if not d.ok_rows:
        return None
    fig, (ax,) = new_figure(height=1.9)
    draw_bars(
        ax,
        list(PARTITIONS),
        [d.total(f"sps_{p}") for p in PARTITIONS],
        [COLOR[p] for p in PARTITIONS],
    )
    ax.set_xlabel("ok rows")
    ax.set_title("SPS partitions")
    return save_png(fig, out_dir, "sps_partition.png")


def _shard_panels(d: ReportData) -> list[tuple[str, list[tuple[str, np.ndarray, str]]]]:
    """Per method: (title, [(label, per-shard counts, colour), ...]) stacked to the shard's rows."""
    ps = d.per_shard
    failed = ps["rows"] - ps["ok"]
    panels = []
    for m in d.methods:
        if m == "sps":  # its partitions say more than kept / dropped
            panels.append(("SPS partitions", [(p, ps[f"sps_{p}"], COLOR[p]) for p in PARTITIONS]))
        elif m in d.rules:  # each method's own keep rule (cleaner.report.data.keep_rules)
            kept = ps[f"{m}_kept"]
            panels.append(
                (
                    f"{m}: {rule_text(d.rules[m])}",
                    [("kept", kept, COLOR["kept"]), ("dropped", ps["ok"] - kept, COLOR["dropped"])],
                )
            )
    tail = [("failed", failed, COLOR["failed"])] if failed.any() else []  # no empty legend entry
    return [(title, parts + tail) for title, parts in panels]


def fig_shards(d: ReportData, out_dir: Path) -> str | None:
    """Kept / dropped per shard: stacked bars for few shards, the spread of
    the kept share across shards for many."""
    panels = _shard_panels(d)
    if not panels or not d.shards:
        return None
    order = sorted(range(len(d.shards)), key=lambda i: d.shards[i])
    few = len(order) <= MAX_SHARD_BARS
    fig, axes = new_figure(nrows=len(panels), height=2.3, sharex=few)
    for ax, (title, parts) in zip(axes, panels, strict=True):
        if few:
            x = np.arange(len(order))
            bottom = np.zeros(len(order))
            for label, counts, color in parts:
                ax.bar(x, counts[order], bottom=bottom, color=color, label=label, width=0.8)
                bottom += counts[order]
            ax.set_ylabel("rows")
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        else:
            rows = np.maximum(d.per_shard["rows"][order], 1)
            share = 100.0 * parts[0][1][order] / rows
            draw_hist(ax, [share], bin_edges(share, bins=40), [parts[0][2]], [None])
            ax.set_ylabel("shards")
            ax.set_xlabel(f"% of a shard's rows: {parts[0][0]}")
        ax.set_title(title, fontsize=9)
    if few:
        names = [Path(d.shards[i]).stem for i in order]
        axes[-1].set_xticks(
            np.arange(len(order)), names, rotation=90 if len(order) > 8 else 0, fontsize=7
        )
        axes[-1].set_xlabel("shard")
    fig.suptitle(f"Kept / dropped per shard ({fmt_count(len(order))} shards)", fontsize=10)
    return save_png(fig, out_dir, "shards.png")


FIGURES = {
    "status": fig_status,
    "cosine": fig_cosine,
    "osa_weight": fig_osa_weight,
    "sdd_w_con": fig_sdd_w_con,
    "sps_loss": fig_sps_loss,
    "sps_partition": fig_partitions,
    "cc_label_quality": fig_cc_quality,
    "shards": fig_shards,
}
FIGURE_METHODS = {
    "cosine": ("osa",),
    "osa_weight": ("osa",),
    "sdd_w_con": ("sdd",),
    "sps_loss": ("sps",),
    "sps_partition": ("sps",),
    "cc_label_quality": ("clipcleaner",),
}

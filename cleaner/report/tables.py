"""The numbers a report shows that are not per method: run metadata, statuses,
shards, classes, neighbour indexes and settings, as key-value rows or :class:`Table`.

A module of its own because both renderers (the aligned text of
:mod:`cleaner.report.text` and the HTML of :mod:`cleaner.report.page`) lay out
the same rows; only the layout differs.
"""

from __future__ import annotations

from dataclasses import dataclass

from cleaner.report.data import ReportData
from cleaner.report.data import shard_counters as _counters

MAX_CLASSES_SHOWN = 100


@dataclass
class Table:
    """A titled table shared by the text and HTML renderers."""

    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""
    text_cols: int = 1  # the first columns hold names (left-aligned); the rest numbers (right)


def fmt_count(x: int | float) -> str:
    """An integer with thousands separators."""
    return f"{int(x):,}"


def fmt_pct(part: int, whole: int) -> str:
    """``part`` as a percentage of ``whole`` ("-" when there is no whole)."""
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def beta_text(beta: dict | None) -> str:
    """beta as 'value ± se (source, K, std, seed)'."""
    if not beta or beta.get("value") is None:
        return "-"
    text = f"{beta['value']:.4f}"
    if beta.get("se"):
        text += f" ± {beta['se']:.4f} (se)"
    extra = [str(beta.get("source", "?"))]
    if beta.get("k"):
        extra.append(f"K={fmt_count(beta['k'])}")
    if beta.get("std"):
        extra.append(f"std {beta['std']:.4f}")
    if beta.get("seed") is not None:
        extra.append(f"seed {beta['seed']}")
    return f"{text}; {', '.join(extra)}"


def sample_note(d: ReportData, what: str = "Histograms and quantiles") -> str:
    """Say whether the sampled numbers saw every ok row (counts always do)."""
    if d.sampled:
        return (
            f"{what} use a uniform random sample of {fmt_count(d.sample_rows)} of "
            f"{fmt_count(d.ok_rows)} ok rows (seed {d.seed}); all counts, means and tables are exact."
        )
    return f"{what} use all {fmt_count(d.ok_rows)} ok rows; counts, means and tables are exact."


def run_rows(d: ReportData) -> list[tuple[str, str]]:
    """The run's metadata: version, estimator, beta, methods, sizes."""
    m = d.meta
    est = m.get("estimator") or {}
    est_text = " / ".join(str(est[k]) for k in ("model", "pretrained") if est.get(k)) or "-"
    if est.get("pretrained_digest"):
        est_text += f" (digest {est['pretrained_digest']})"
    rows = [
        ("sidecar", str(d.path)),
        (
            "rows",
            f"{fmt_count(d.n_rows)} in {fmt_count(len(d.shards))} shard(s), {len(d.files)} file(s)",
        ),
        (
            "nclean version",
            f"{m.get('nclean_version', '?')} (schema {m.get('schema_version', '?')})",
        ),
        ("estimator", est_text),
        ("methods", ", ".join(d.methods) or "-"),
    ]
    if m.get("beta"):
        rows.append(("beta (OSA boundary)", beta_text(m["beta"])))
    if m.get("fit_id"):
        rows.append(("fit id", str(m["fit_id"])))
    return rows


def status_table(d: ReportData) -> Table:
    # ok first, then failures by count: the eye looks for "how many failed, and why"
    items = sorted(d.status.items(), key=lambda kv: (kv[0] != "ok", -kv[1], kv[0]))
    return Table(
        "Status",
        ["status", "rows", "share"],
        [[k, fmt_count(v), fmt_pct(v, d.n_rows)] for k, v in items],
    )


def shard_counters(d: ReportData) -> list[tuple[str, str]]:
    return _counters(d)


def shard_table(d: ReportData, limit: int | None) -> Table:
    """Per-shard rows, ok, failed and each method's kept count (first ``limit`` shards)."""
    counters = shard_counters(d)
    order = sorted(range(len(d.shards)), key=lambda i: d.shards[i])
    shown = order if limit is None else order[:limit]
    rows = []
    for i in shown:
        ps = d.per_shard
        row = [
            d.shards[i],
            fmt_count(ps["rows"][i]),
            fmt_count(ps["ok"][i]),
            fmt_count(ps["rows"][i] - ps["ok"][i]),
        ]
        row += [fmt_count(ps[c][i]) for c, _ in counters]
        rows.append(row)
    note = (
        f"first {len(shown)} of {fmt_count(len(order))} shards" if len(shown) < len(order) else ""
    )
    return Table(
        "Shards", ["shard", "rows", "ok", "failed"] + [label for _, label in counters], rows, note
    )


def class_table(d: ReportData, limit: int = MAX_CLASSES_SHOWN) -> Table:
    names = d.params("clipcleaner").get("classes") or []
    rows = []
    for c in range(len(d.class_rows)):
        n, s = int(d.class_rows[c]), int(d.class_selected[c])
        if n == 0:
            continue
        rows.append(
            [
                str(c),
                str(names[c]) if c < len(names) else "",
                fmt_count(n),
                fmt_count(s),
                fmt_pct(s, n),
            ]
        )
    note = f"first {limit} of {len(rows)} classes" if len(rows) > limit else ""
    return Table(
        "CLIPCleaner selection per class",
        ["label", "class", "ok rows", "selected", "share"],
        rows[:limit],
        note,
        text_cols=2,
    )


def neighbor_table(d: ReportData) -> Table | None:
    nb = d.meta.get("neighbors") or {}
    if not nb:
        return None
    rows = []
    for name, info in sorted(nb.items()):
        info = info or {}
        kind = str(info.get("kind", "?")) + (" (gpu)" if info.get("gpu") else "")
        if info.get("nlist"):
            kind += f", nlist {info['nlist']}, nprobe {info.get('nprobe')}"
        recall = info.get("recall_at_1")
        rows.append(
            [
                name,
                kind,
                fmt_count(info.get("ntotal") or 0),
                "-" if recall is None else f"{recall:.4f}",
            ]
        )
    return Table("Neighbour indexes", ["index", "kind", "rows", "recall@1"], rows, text_cols=2)


def _flatten(obj, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(obj, dict):
        out = []
        for k in sorted(obj):
            out += _flatten(obj[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(obj, list):
        return [(prefix, ", ".join(map(str, obj)))]
    return [(prefix, "-" if obj is None else str(obj))]


# Settings prefixes that belong to one method; hidden when that method is absent.
_SETTING_OWNER = {"sdd_": "sdd", "sps_": "sps", "cc_": "clipcleaner"}


def settings_rows(d: ReportData) -> list[tuple[str, str]]:
    """The job's settings, flattened, without those of methods the sidecar lacks."""
    rows = []
    for key, value in _flatten(d.meta.get("settings") or {}):
        leaf = key.rsplit(".", 1)[-1]
        owner = next((m for pre, m in _SETTING_OWNER.items() if leaf.startswith(pre)), None)
        if owner is None or owner in d.methods:
            rows.append((key, value))
    return rows


def argv_text(d: ReportData) -> str:
    argv = d.meta.get("argv") or []
    return "nclean " + " ".join(map(str, argv)) if argv else ""

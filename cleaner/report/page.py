"""The report's ``index.html``: one self-contained page (inline CSS, no scripts,
no external assets; it refers only to the PNGs and ``shards.csv`` next to it,
and the pairs' thumbnails are inline data URIs).

A module of its own because it is only layout: the rows come from
:mod:`cleaner.report.tables` and :mod:`cleaner.report.method_rows`, the
figures' file names from :mod:`cleaner.report.figures`.
"""

from __future__ import annotations

import html

from cleaner.report.data import ReportData
from cleaner.report.method_rows import rows_of, title_of
from cleaner.report.pair_page import PAIRS_CSS
from cleaner.report.tables import (
    Table,
    argv_text,
    class_table,
    fmt_count,
    neighbor_table,
    run_rows,
    sample_note,
    settings_rows,
    shard_table,
    status_table,
)

MAX_HTML_SHARDS = 200  # shard rows shown on the page; shards.csv holds them all

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#222;background:#f6f7f9}
header{background:#264653;color:#fff;padding:14px 24px}
header h1{margin:0;font-size:20px}header p{margin:4px 0 0;opacity:.85;word-break:break-all}
nav{padding:8px 24px;background:#e9eef2;font-size:13px}nav a{margin-right:14px;color:#264653}
main{padding:8px 24px 40px;max-width:1400px}
section{background:#fff;border:1px solid #dde2e6;border-radius:6px;margin:16px 0;padding:4px 16px 14px}
h2{font-size:17px;margin:12px 0 8px;color:#264653}h3{font-size:14px;margin:12px 0 6px}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(440px,1fr));gap:14px;align-items:start}
.grid.one{grid-template-columns:minmax(0,1fr)}
figure{margin:0}figure img{max-width:100%;height:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:13px;margin:4px 0}
td,th{border-bottom:1px solid #e5e8eb;padding:3px 10px 3px 0;text-align:left;vertical-align:top}
th{color:#555;font-weight:600;white-space:nowrap}td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
table.kv td:first-child{color:#555;white-space:nowrap}
.note{color:#666;font-size:12px;margin:6px 0}
.scroll{max-height:420px;overflow:auto}
code{background:#f0f2f4;padding:2px 4px;border-radius:3px;word-break:break-all}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _kv_html(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<table class="kv">{body}</table>'


def _table_html(t: Table, title: bool = True) -> str:
    def cls(i):
        return ' class="num"' if i >= t.text_cols else ""

    head = "".join(f"<th{cls(i)}>{_e(h)}</th>" for i, h in enumerate(t.headers))
    body = "".join(
        "<tr>" + "".join(f"<td{cls(i)}>{_e(c)}</td>" for i, c in enumerate(r)) + "</tr>"
        for r in t.rows
    )
    # one <div>: in the section grid, a table's heading and note stay with it
    out = f"<div><h3>{_e(t.title)}</h3>" if title else "<div>"
    out += f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
    if t.note:
        out += f'<p class="note">{_e(t.note)}</p>'
    return out + "</div>"


def _img(name: str | None, alt: str) -> str:
    return f'<figure><img src="{_e(name)}" alt="{_e(alt)}"></figure>' if name else ""


def _section(anchor: str, title: str, *blocks: str, wide: bool = False) -> str:
    """A card whose blocks flow in a two-column grid, or stack when ``wide``
    (for tables with many columns, which must not be squeezed)."""
    grid = "grid one" if wide else "grid"
    body = "".join(b for b in blocks if b)
    return (
        f'<section id="{_e(anchor)}"><h2>{_e(title)}</h2><div class="{grid}">{body}</div></section>'
    )


def _method_section(d: ReportData, method: str, figs: dict[str, str | None]) -> str:
    kv = _kv_html(rows_of(d, method))
    if method == "osa":
        return _section(
            "osa",
            "OSA — one-step anti-noise",
            kv,
            _img(figs.get("cosine"), "cosine histogram"),
            _img(figs.get("osa_weight"), "osa_weight histogram"),
        )
    if method == "sdd":
        # the cosine figure carries SDD's thresholds and GMM; repeat it here only when OSA has not shown it
        cos = "" if "osa" in d.methods else _img(figs.get("cosine"), "cosine histogram")
        return _section(
            "sdd",
            "SDD — self-drop and dual weight",
            kv,
            cos,
            _img(figs.get("sdd_w_con"), "sdd_w_con histogram"),
        )
    if method == "sps":
        return _section(
            "sps",
            "SPS — proxy points",
            kv,
            _img(figs.get("sps_loss"), "SPS loss histogram"),
            _img(figs.get("sps_partition"), "SPS partition counts"),
        )
    if method != "clipcleaner":  # match, and any method registered without a section here
        return _section(method, title_of(method), kv)
    return _section(
        "clipcleaner",
        "CLIPCleaner — label-noise selection",
        kv,
        _img(figs.get("cc_label_quality"), "label quality by selection"),
        _table_html(class_table(d)),
    )


def render_html(
    d: ReportData, figs: dict[str, str | None], shards_csv: str | None, pairs: str = ""
) -> str:
    """The page: header, run metadata, statuses, the pairs (``pairs``: the inner
    HTML of :func:`cleaner.report.pair_page.pairs_html`, when shards were
    given), one section per method, shards, settings."""
    nav = (
        [("run", "Run"), ("status", "Status")]
        + ([("pairs", "Pairs")] if pairs else [])
        + [(m, title_of(m)) for m in d.methods]
        + [("shards", "Shards"), ("settings", "Settings")]
    )
    nav_html = "".join(f'<a href="#{a}">{_e(t)}</a>' for a, t in nav)
    parts = [
        _section(
            "run",
            "Run",
            _kv_html(run_rows(d)),
            _table_html(neighbor_table(d)) if neighbor_table(d) else "",
        ),
        _section(
            "status",
            "Status",
            _table_html(status_table(d), title=False),
            _img(figs.get("status"), "rows per status"),
        ),
    ]
    if pairs:
        parts.append(f'<section id="pairs"><h2>Pairs</h2>{pairs}</section>')
    parts += [_method_section(d, m, figs) for m in d.methods]
    csv_link = (
        f'<p class="note">All shards: <a href="{_e(shards_csv)}">{_e(shards_csv)}</a></p>'
        if shards_csv
        else ""
    )
    parts.append(
        _section(
            "shards",
            "Shards",
            f"<div>{_table_html(shard_table(d, MAX_HTML_SHARDS), title=False)}{csv_link}</div>",
            _img(figs.get("shards"), "kept and dropped per shard"),
            wide=True,
        )
    )
    cmd = f"<h3>Command</h3><p><code>{_e(argv_text(d))}</code></p>" if argv_text(d) else ""
    parts.append(_section("settings", "Settings", f"<div>{_kv_html(settings_rows(d))}{cmd}</div>"))
    title = f"nclean report — {d.path.name or d.path}"
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{_CSS}{PAIRS_CSS if pairs else ''}</style></head><body>"
        f"<header><h1>{_e(title)}</h1><p>{_e(d.path)} · {fmt_count(d.n_rows)} rows · {fmt_count(d.ok_rows)} ok · "
        f"methods: {_e(', '.join(d.methods) or '-')}</p></header>"
        f'<nav>{nav_html}</nav><main><p class="note">{_e(sample_note(d))}</p>{"".join(parts)}</main></body></html>\n'
    )

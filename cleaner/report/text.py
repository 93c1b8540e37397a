"""The terminal report: the page's counts and key numbers as aligned text.

A module of its own so the text layout (column widths, alignment) stays apart
from the HTML one; both take their rows from :mod:`cleaner.report.tables` and
:mod:`cleaner.report.method_rows`.
"""

from __future__ import annotations

from cleaner.report.data import ReportData
from cleaner.report.method_rows import rows_of, title_of
from cleaner.report.tables import (
    Table,
    argv_text,
    class_table,
    neighbor_table,
    run_rows,
    sample_note,
    settings_rows,
    shard_table,
    status_table,
)

MAX_TEXT_SHARDS = 50


def _kv_lines(rows: list[tuple[str, str]], indent: str = "  ") -> list[str]:
    width = max((len(k) for k, _ in rows), default=0)
    return [f"{indent}{k:<{width}}  {v}" for k, v in rows]


def _table_lines(t: Table, indent: str = "  ") -> list[str]:
    cells = [t.headers] + t.rows
    widths = [max(len(r[i]) for r in cells) for i in range(len(t.headers))]

    def line(r):
        parts = [
            c.ljust(w) if i < t.text_cols else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        return indent + "  ".join(parts).rstrip()

    out = [line(t.headers)] + [line(r) for r in t.rows]
    if t.note:
        out.append(f"{indent}({t.note})")
    return out


def format_text(d: ReportData) -> str:
    """The terminal report: the page's counts and key numbers, aligned."""
    out = [f"nclean report: {d.path}"]
    out += _kv_lines(run_rows(d)[1:])
    out += ["", "status"] + _table_lines(status_table(d))[1:]
    for m in d.methods:
        out += ["", title_of(m)] + _kv_lines(rows_of(d, m))
    nb = neighbor_table(d)
    if nb:
        out += ["", "neighbour indexes"] + _table_lines(nb)
    out += ["", "shards"] + _table_lines(shard_table(d, MAX_TEXT_SHARDS))
    if "clipcleaner" in d.methods:
        out += ["", "CLIPCleaner per class"] + _table_lines(class_table(d, MAX_TEXT_SHARDS))
    settings = settings_rows(d)
    if settings:
        out += ["", "settings"] + _kv_lines(settings)
    if argv_text(d):
        out += ["", "command", f"  {argv_text(d)}"]
    out += ["", sample_note(d, "Quantiles")]
    return "\n".join(out) + "\n"

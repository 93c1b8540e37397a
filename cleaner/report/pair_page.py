"""The report's "Pairs" section: thumbnails with captions, scores and every method's verdict.

Layout only: the rows come from :mod:`cleaner.report.pair_select`, the
images from :mod:`cleaner.report.pair_images`. Per method, kept groups sit
on the left and dropped groups on the right, so one look down the page
compares what a filter keeps with what it removes. Every card shows the
caption (HTML-escaped; long ones clipped, the full text on hover), where the
sample lives, the scores, and a tick or cross per method, so disagreements
are visible on every card, not only in the disagreement groups.
"""

from __future__ import annotations

import html

from cleaner.report.pair_images import Thumb
from cleaner.report.pair_select import KINDS, PairSelection, Pick, Verdict
from cleaner.report.tables import fmt_count, fmt_pct

CAPTION_CHARS = 160  # shown on the card; the title attribute holds the rest

CARD_PX = 150  # a card's width and its image box's side on the page

# Strips stack (kept, dropped, kept, ...) on ordinary screens, each one row of
# the default six cards; on very wide ones kept and dropped sit side by side.
PAIRS_CSS = f"""
.pgrid{{display:grid;grid-template-columns:repeat(auto-fit,minmax(960px,1fr));gap:0 24px}}
.strip h4{{font-size:13px;margin:10px 0 6px;color:#333}}.strip h4 span{{color:#777;font-weight:400}}
.cards{{display:flex;flex-wrap:wrap;gap:8px}}
.pair{{width:{CARD_PX}px;margin:0;background:#fafbfc;border:1px solid #dde2e6;border-radius:4px;overflow:hidden;font-size:11.5px}}
.pair.kept{{border-top:4px solid #2a9d8f}}.pair.dropped{{border-top:4px solid #e76f51}}
.thumb{{height:{CARD_PX}px;display:flex;align-items:center;justify-content:center;background:#eef0f2}}
.thumb img{{width:100%;height:100%;object-fit:contain}}
.thumb .miss{{color:#a33;padding:6px;font-size:11px;word-break:break-word}}
.pair figcaption{{padding:4px 6px 6px}}.pair p{{margin:2px 0;word-break:break-word}}
.cap{{color:#111}}.where,.scores{{color:#666;font-variant-numeric:tabular-nums}}.scores b{{color:#222}}
.v{{display:inline-block;margin:2px 3px 0 0;padding:0 4px;border-radius:3px;font-size:10.5px}}
.v.k{{background:#d8f0ec;color:#1d6b61}}.v.d{{background:#fbe1da;color:#a63b20}}
"""

# column -> label on a card (its value follows)
_LABELS = {
    "cosine": "cosine",
    "osa_weight": "osa_w",
    "sdd_w_con": "w_con",
    "sps_clean_prob": "p_clean",
    "cc_label_quality": "quality",
}


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _number(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def _scores(p: Pick, sel: PairSelection, bold: str, classes: list[str]) -> str:
    shown, parts = set(), []
    for v in sel.verdicts:
        for c in v.columns:
            if c in shown or c in ("sdd_keep", "cc_selected", "sps_partition", "label"):
                continue
            shown.add(c)
            text = f"{_LABELS.get(c, c)} {_e(_number(p.values.get(c)))}"
            parts.append(f"<b>{text}</b>" if c == bold else text)
    if "sps_partition" in p.values:
        parts.append(_e(p.values["sps_partition"] or "-"))
    if p.values.get("label") is not None:
        label = p.values["label"]
        name = classes[label] if 0 <= label < len(classes) else label
        parts.append(f"label {_e(name)}")
    return " · ".join(parts)


def _card(p: Pick, t: Thumb, v: Verdict, sel: PairSelection, classes: list[str]) -> str:
    alt = f"{p.shard} #{p.index} ({p.key})"
    if t.src:
        img = f'<img src="{t.src}" width="{t.width}" height="{t.height}" alt="{_e(alt)}">'
    else:
        img = f'<span class="miss">{_e(t.note or "no image")}</span>'
    cap = t.caption if t.caption is not None else f"({t.note})"
    short = cap if len(cap) <= CAPTION_CHARS else cap[: CAPTION_CHARS - 1] + "…"
    badges = "".join(
        f'<span class="v {"k" if p.keep[o.method] else "d"}" title="{o.title} '
        f'{"keeps" if p.keep[o.method] else "drops"} it">{_e(o.title)} '
        f"{'✓' if p.keep[o.method] else '✗'}</span>"
        for o in sel.verdicts
    )
    state = "kept" if p.keep[v.method] else "dropped"
    return (
        f'<figure class="pair {state}"><div class="thumb">{img}</div><figcaption>'
        f'<p class="cap" title="{_e(cap)}">{_e(short)}</p>'
        f'<p class="where">{_e(alt)}</p>'
        f'<p class="scores">{_scores(p, sel, v.score, classes)}</p>'
        f'<p class="verdicts">{badges}</p></figcaption></figure>'
    )


def _strip(sel, v: Verdict, kind: str, title: str, thumbs, classes) -> str:
    group = sel.picks[(v.method, kind)]
    total = sel.counts[(v.method, kind)]
    head = f"<h4>{_e(title.format(score=v.score))} <span>{len(group)} of {fmt_count(total)}</span></h4>"
    if not group:
        why = (
            "only one method: nothing to disagree with"
            if "disagree" in kind and len(sel.verdicts) < 2
            else "none"
        )
        return f'<div class="strip">{head}<p class="note">{_e(why)}</p></div>'
    cards = "".join(_card(p, thumbs[(p.shard, p.index)], v, sel, classes) for p in group)
    return f'<div class="strip">{head}<div class="cards">{cards}</div></div>'


def pairs_html(sel: PairSelection, thumbs: dict, classes: list[str] | None = None) -> str:
    """The inner HTML of the Pairs section (one block per method)."""
    classes = classes or []
    blocks = [
        f'<p class="note">Up to {sel.k} pairs per group, chosen with seed {sel.seed} from '
        f"{fmt_count(sel.ok_rows)} ok rows (random groups are uniform samples; the others "
        "are the borderline rows by score). Images and captions are read back from the "
        "shards; hover over a caption for all of it.</p>"
    ]
    for v in sel.verdicts:
        kept = sel.kept[v.method]
        strips = "".join(_strip(sel, v, kind, title, thumbs, classes) for kind, title in KINDS)
        blocks.append(
            f'<div id="pairs-{_e(v.method)}"><h3>{_e(v.title)} keeps {_e(v.rule)}: '
            f"{fmt_count(kept)} of {fmt_count(sel.ok_rows)} ok rows "
            f"({fmt_pct(kept, sel.ok_rows)})</h3>"
            f'<div class="pgrid">{strips}</div></div>'
        )
    return "".join(blocks)

"""What the score job tells its caller: the summary, phase timings, and the
warnings and messages that explain a run (kept out of the stage code).

The verdict at the end of ``nclean score``: each method's share of kept rows,
counted from the parts with the method's own keep rule (``keep_expr`` in its
declaration, the expression ``nclean filter --where`` takes), and the noise
rate estimated by the label-free calibrations the fit ran (``match``'s, and
the raw cosine's that OSA and ``--thresholds auto`` use).
"""

from __future__ import annotations

import ast
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleaner.methods import catalog
from cleaner.train.expressions import evaluate_table
from pipelines.fit_stage import log


@dataclass
class ScoreSummary:
    rows: int = 0
    status_counts: dict[str, int] = field(default_factory=dict)
    parts_written: int = 0
    parts_skipped: int = 0
    fatal_shards: dict[str, str] = field(default_factory=dict)
    shard_warnings: dict[str, list[str]] = field(default_factory=dict)
    merged: str | None = None
    merged_written: bool = False
    parts_dir: str = ""
    fit: dict = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per phase
    # method -> {"where": keep rule, "kept": rows kept, "ok": scorable rows}
    kept: dict[str, dict] = field(default_factory=dict)


class Phases:
    """Times each phase into ``summary.timings`` and tells ``callback``."""

    def __init__(self, summary: ScoreSummary, callback):
        self.summary, self.callback = summary, callback
        self.name, self.t0 = None, 0.0

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        if self.name is not None:
            timings = self.summary.timings
            timings[self.name] = timings.get(self.name, 0.0) + now - self.t0
        self.name, self.t0 = (None if name == "done" else name), now
        if self.callback is not None:
            self.callback(name)


def nothing_usable_message(job, cache, stems: list[str]) -> str:
    """Why not one sample is scorable, with counts per status and a hint."""
    status: Counter = Counter()
    for stem in stems:
        if cache.info(stem) is not None:
            col = pq.read_table(cache.meta_path(stem), columns=["status"]).column("status")
            status.update(col.to_pylist())
        else:
            status.update(cache.load(stem).meta.column("status").to_pylist())
    n = sum(status.values())
    where = f"{len(stems)} shard{'s' if len(stems) != 1 else ''}"
    if n == 0:
        return f"nothing could be scored: {where} without a single sample"
    detail = ", ".join(f"{v} {k}" for k, v in status.most_common())
    msg = f"nothing could be scored: {n} samples in {where}, none usable ({detail})"
    spec = job.sample_spec
    if job.embeddings is None and (status["missing_image"] or status["missing_text"]):
        msg += (
            f"; check --image-key (now {';'.join(spec.image_keys)}) and --text-key "
            f"(now {spec.text_key}) against the shards' member names"
        )
    return msg


def warn_negative_beta(fit: dict) -> None:
    """Say (on every run, a resumed one too) where OSA's paper cubic misranks
    pairs on this data: beta < 0, rows past the peak d = 2/3."""
    osa = (fit.get("scorers") or {}).get("osa") or {}
    paper = osa.get("form", "paper") == "paper"
    beta = (fit.get("beta") or {}).get("value")
    if beta is not None and beta < 0 and paper:
        log(
            f"warning: beta = {beta:.4f} < 0: OSA's cubic gives the best matches "
            f"(cosine > {1 + beta:.4f}) weight 0 and clean pairs less weight; "
            "to keep pairs by OSA's own rule filter on cosine > beta, not osa_weight > 0"
        )
    past = (osa.get("assumptions") or {}).get("share_past_peak") or 0.0
    if paper and past > 0:
        log(
            f"warning: OSA: {100 * past:.1f}% of sampled rows have d = cosine - beta > 2/3, "
            "past the cubic's peak, where osa_weight falls as the cosine rises (clean pairs "
            "weigh less than noisier ones); --thresholds auto keeps the weight monotone"
        )


def _names(expr: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(expr, mode="eval")) if isinstance(n, ast.Name)}


def keep_counts(parts, methods: list[str], params: dict) -> dict[str, dict]:
    """Rows each method keeps, by its declared keep rule, read from the parts
    (what a reader of the sidecar will count); ok rows only."""
    rules = {m: catalog.get(m).keep_where(params.get(m) or {}) for m in methods}
    rules = {m: r for m, r in rules.items() if r}
    columns = sorted({"status"}.union(*(_names(r) for r in rules.values())))
    kept, ok = dict.fromkeys(rules, 0), 0
    for part in parts:
        table = pq.read_table(part, columns=columns)
        is_ok = pc.fill_null(pc.equal(table.column("status"), "ok"), False).to_numpy(
            zero_copy_only=False
        )
        ok += int(is_ok.sum())
        for m, rule in rules.items():
            kept[m] += int(np.count_nonzero(evaluate_table(table, rule, True) & is_ok))
    return {m: {"where": rules[m], "kept": kept[m], "ok": ok} for m in rules}


def noise_estimates(fit: dict) -> list[tuple[str, float]]:
    """(what, estimated noise share) from every label-free calibration the fit ran."""
    scorers = fit.get("scorers") or {}
    out = []
    pi = ((scorers.get("match") or {}).get("fit") or {}).get("pi")
    if pi is not None:
        score = ((scorers["match"].get("settings")) or {}).get("score", "?")
        out.append((f"match ({score} score vs shuffled pairs)", float(pi)))
    for name in ("osa", "sdd"):
        p = scorers.get(name) or {}
        cal = p.get("calibration") or (p.get("thresholds") or {}).get("calibration")
        if cal and cal.get("pi") is not None:
            out.append(("raw cosine vs shuffled pairs", float(cal["pi"])))
            break  # OSA's and SDD's are the same calibration
    return out


def verdict_lines(summary: ScoreSummary) -> list[str]:
    """The end of ``nclean score``: kept share per method, estimated noise rate."""
    lines = []
    if summary.kept:
        mode = (summary.fit.get("settings") or {}).get("thresholds", "paper")
        lines.append(f"kept (share of ok rows; thresholds {mode}):")
        width = max(len(m) for m in summary.kept)
        for m, k in summary.kept.items():
            share = f"{100 * k['kept'] / k['ok']:5.1f}%" if k["ok"] else "    -"
            lines.append(f"  {m:{width}s} {share}  {k['kept']} of {k['ok']}  ({k['where']})")
    estimates = noise_estimates(summary.fit)
    for what, pi in estimates:
        lines.append(f"estimated noise rate: {100 * pi:.1f}% ({what})")
    if not estimates and summary.kept:
        lines.append("estimated noise rate: - (estimated by osa, match or --thresholds auto)")
    return lines


def warn_missing_uids(job, cache, stems: list[str]) -> str | None:
    """One warning when --uid-field was not found in some samples (their uid
    is null); returns it. A warning, not an error: uids are an optional join
    key that does not change any score, and the count is only known after
    the embedding pass, whose work an error would throw away."""
    field_name = job.sample_spec.uid_field
    if not field_name or job.embeddings is not None:
        return None
    missing = total = 0
    for stem in stems:
        uid = pq.read_table(cache.meta_path(stem), columns=["uid"]).column("uid")
        missing += uid.null_count
        total += len(uid)
    if not missing:
        return None
    msg = (
        f"warning: --uid-field {field_name!r} missing in {missing} of {total} samples "
        "(no .json member, or no such field): their uid is null"
    )
    if missing == total:
        msg += "; check the field name"
    log(msg)
    return msg

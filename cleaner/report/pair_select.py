"""Which pairs the report shows: a bounded, seeded choice per method, in one streaming pass.

A person deciding whether to trust a filter wants to see pairs, not only
histograms. For every method the sidecar holds, this module picks at most
``k`` ok rows of each :data:`KINDS` group -- a random sample of what the
method keeps and of what it drops, the kept pairs with the lowest score and
the dropped pairs with the highest (the borderline cases), and the pairs on
which this method and another one disagree.

Sidecars can hold millions of rows, so the pass streams record batches of
only the columns it needs and keeps at most ``k`` candidates per group:
random samples keep the ``k`` smallest of one seeded uniform number per row
(a uniform sample without replacement, the same for the same file and
seed), extremes keep the ``k`` best scores. Group sizes are counted exactly.
Only the chosen rows' images are read afterwards
(:mod:`cleaner.report.pair_images`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleaner.errors import InputError
from cleaner.report import DEFAULT_PAIRS
from cleaner.report.data import BATCH_ROWS, ReportData, keep_rules, rule_columns, rule_text
from cleaner.train.expressions import evaluate_table

# (name, title); "kept" groups are laid out on the left, "dropped" on the right.
KINDS = (
    ("kept_random", "Kept: a random sample"),
    ("dropped_random", "Dropped: a random sample"),
    ("kept_low", "Kept, lowest {score}"),
    ("dropped_high", "Dropped, highest {score}"),
    ("kept_disagree", "Kept here, dropped by another method"),
    ("dropped_disagree", "Dropped here, kept by another method"),
)


@dataclass(frozen=True)
class Verdict:
    """How a method's keep/drop verdict and its score are read from the sidecar."""

    method: str
    title: str
    rule: str  # the keep rule, as shown (long decimals cut)
    score: str  # column ranked for the borderline groups; higher means cleaner
    columns: tuple[str, ...]  # every column the verdict and the cards read
    expr: str = ""  # the keep rule evaluated: the method's keep_expr, filled


@dataclass
class Pick:
    """One chosen row: where its sample lives and what every method says of it."""

    row: int  # position in the sidecar (files in order, then rows)
    shard: str
    index: int
    key: str
    keep: dict[str, bool] = field(default_factory=dict)
    values: dict[str, object] = field(default_factory=dict)  # column -> value, for the card


@dataclass
class PairSelection:
    """The chosen rows per (method, kind), in display order, and each group's exact size."""

    verdicts: list[Verdict]
    picks: dict[tuple[str, str], list[Pick]]
    counts: dict[tuple[str, str], int]
    kept: dict[str, int]
    ok_rows: int
    k: int
    seed: int

    def all_picks(self) -> list[Pick]:
        return [p for group in self.picks.values() for p in group]


# How the pair cards show a method (not its verdict, which is its keep rule):
# title, the column ranked for the borderline groups (higher = cleaner) and
# the columns a card prints. A method not listed shows its rule's columns and
# ranks by its first float column.
DISPLAY = {
    "osa": ("OSA", "cosine", ("cosine",)),
    "sdd": ("SDD", "cosine", ("sdd_keep", "sdd_w_con")),
    "sps": ("SPS", "sps_clean_prob", ("sps_partition", "sps_clean_prob")),
    "clipcleaner": ("CLIPCleaner", "cc_label_quality", ("cc_selected", "cc_label_quality", "label")),
    "match": ("match", "match_score", ("match_keep", "match_score", "match_clean_prob")),
}


def _display(method: str, rule: str, columns: set[str]) -> tuple[str, str, tuple[str, ...]] | None:
    """(title, score column, card columns) of a method, or None when it has no score to rank."""
    from cleaner.methods import catalog

    title, score, cols = DISPLAY.get(method, (method, None, ()))
    if method == "sdd" and "cosine" not in columns:  # SDD without OSA's columns: rank by its weight
        score = "sdd_w_con"
    if score is None:
        m = catalog.REGISTRY.get(method)
        floats = [f.name for f in (m.fields if m else ()) if pa.types.is_floating(f.type)]
        if not floats:
            return None
        score = floats[0]
    cols = tuple(dict.fromkeys((*cols, *sorted(rule_columns(rule)), score)))
    return title, score, cols


def method_verdicts(methods: list[str], meta: dict, columns: set[str] | None = None) -> list[Verdict]:
    """The verdicts of the methods present: each method's own keep rule
    (:func:`cleaner.report.data.keep_rules`, the registry's ``keep_expr``);
    a method without a keep rule, or without a score to rank, gets none.
    ``columns``: the sidecar's columns (default: every column a method declares)."""
    from cleaner.io import schema as S

    if columns is None:
        columns = {f.name for f in S.schema_for(methods, meta)}
    out = []
    for m, rule in keep_rules(methods, meta).items():
        shown = _display(m, rule, columns)
        if shown is not None and {shown[1], *shown[2]} <= columns:
            out.append(Verdict(m, shown[0], rule_text(rule), shown[1], shown[2], rule))
    return out


def _bool(col) -> np.ndarray:
    return pc.fill_null(col, False).to_numpy(zero_copy_only=False).astype(bool)


def _float(col) -> np.ndarray:
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


def _keep(v: Verdict, table: pa.Table) -> np.ndarray:
    """Rows the method keeps by its own rule; unknown (null) is not kept."""
    return evaluate_table(table, v.expr, True)


class _Chooser:
    """Streaming accumulator behind :func:`select_pairs`."""

    def __init__(self, verdicts: list[Verdict], k: int, seed: int):
        self.verdicts, self.k = verdicts, k
        self.rng = np.random.default_rng(seed)
        self.row0 = 0
        self.ok_rows = 0
        self.kept = {v.method: 0 for v in verdicts}
        groups = [(v.method, kind) for v in verdicts for kind, _ in KINDS]
        self.best: dict[tuple[str, str], list[tuple[float, int, Pick]]] = {g: [] for g in groups}
        self.counts = {g: 0 for g in groups}

    def add(self, batch: pa.RecordBatch) -> None:
        n = batch.num_rows
        ok = _bool(pc.equal(batch.column("status"), "ok"))
        # one uniform number per row, ok or not, so the sample depends only on the file and seed
        u = self.rng.random(n)
        self.ok_rows += int(ok.sum())
        table = pa.Table.from_batches([batch])
        keep = {v.method: _keep(v, table) & ok for v in self.verdicts}
        for v in self.verdicts:
            kept, dropped = keep[v.method], ok & ~keep[v.method]
            self.kept[v.method] += int(kept.sum())
            score = _float(batch.column(v.score))
            finite = np.isfinite(score)
            others = [keep[o.method] for o in self.verdicts if o.method != v.method]
            any_keep = np.logical_or.reduce(others) if others else np.zeros(n, bool)
            any_drop = np.logical_or.reduce([ok & ~o for o in others]) if others else any_keep
            groups = {
                "kept_random": (kept, u),
                "dropped_random": (dropped, u),
                "kept_low": (kept & finite, score),
                "dropped_high": (dropped & finite, -score),
                "kept_disagree": (kept & any_drop, u),
                "dropped_disagree": (dropped & any_keep, u),
            }
            for kind, (mask, order) in groups.items():
                self._offer((v.method, kind), mask, order, batch, keep)
        self.row0 += n

    def _offer(self, group, mask, order, batch, keep) -> None:
        """Merge this batch's ``k`` smallest ``order`` values among ``mask`` rows into the group."""
        idx = np.flatnonzero(mask)
        self.counts[group] += len(idx)
        if not len(idx):
            return
        if len(idx) > self.k:
            idx = idx[np.argpartition(order[idx], self.k - 1)[: self.k]]
        best = self.best[group]
        worst = max(best)[:2] if len(best) >= self.k else None
        for i in idx:
            cand = (float(order[i]), self.row0 + int(i))
            if worst is None or cand < worst:
                best.append((*cand, self._pick(batch, int(i), keep)))
        best.sort(key=lambda c: c[:2])
        del best[self.k :]

    def _pick(self, batch: pa.RecordBatch, i: int, keep) -> Pick:
        pick = Pick(
            row=self.row0 + i,
            shard=batch.column("shard")[i].as_py(),
            index=int(batch.column("index")[i].as_py()),
            key=batch.column("key")[i].as_py(),
            keep={m: bool(k[i]) for m, k in keep.items()},
        )
        for v in self.verdicts:
            for c in v.columns:
                pick.values[c] = batch.column(c)[i].as_py()
        return pick


def select_pairs(d: ReportData, k: int = DEFAULT_PAIRS, seed: int = 0) -> PairSelection:
    """Choose the pairs to show for every method of the sidecar ``d`` was read from."""
    names = set(pq.read_schema(d.files[0]).names) if d.files else set()
    verdicts = method_verdicts(d.methods, d.meta, names)
    chooser = _Chooser(verdicts, k, seed)
    columns = ["shard", "index", "key", "status"]
    columns += sorted({c for v in verdicts for c in v.columns})
    if verdicts:
        for f in d.files:
            _stream(Path(f), columns, chooser)
    picks = {g: [c[2] for c in best] for g, best in chooser.best.items()}
    return PairSelection(verdicts, picks, chooser.counts, chooser.kept, chooser.ok_rows, k, seed)


def _stream(path: Path, columns: list[str], chooser: _Chooser) -> None:
    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS, columns=columns):
            chooser.add(batch)
    except (OSError, pa.ArrowException) as exc:
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: cannot read ({line})") from None

"""Neighbour searches for several shards at once, ahead of their transform.

A neighbour search runs best on large query batches (the grouped IVF
search compares each list with all of its queries in one matrix product:
measured at 2^16 pool rows, 58 us of CPU per query in batches of 3,000,
35 us in batches of 10,000 or more). A shard's own searches can be small --
SPS looks for proxies only for its noisy rows, and shards can be small --
so the local transform takes shards in groups of up to ``GROUP_ROWS`` rows,
asks each method which rows it will search each pool with
(:meth:`~cleaner.methods.registry.Method.queries`), searches those rows of
the whole group in one call per pool, and hands the methods pools that
answer from those results (:class:`AnsweredPool`).

The answers are the ones the method's own search would get: searches are
batch-independent (:func:`cleaner.methods.neighbors_search.rescore`), and
an answer is used only for a top-1 search by the same row id with the same
query vector (checked on its first components) -- anything else goes to
the index itself, so a hint that is wrong costs time, never correctness.
"""

from __future__ import annotations

import numpy as np

from cleaner.methods import catalog
from cleaner.methods.neighbors import NeighborIndex
from cleaner.methods.neighbors_search import as_query_row_ids, normalised, pair_scores, resolve

# rows of the shards searched together (bounds memory; 6k queries search as fast as 9k)
GROUP_ROWS = 20_480
ALONE_ROWS = 8192  # a shard with this many queries for a pool is searched on its own
FINGERPRINT_DIMS = 8  # query components compared before an answer is used


class AnsweredPool:
    """A NeighborIndex that answers top-1 searches of known queries from
    results computed ahead; everything else is the index's. ``q``: the
    normalised queries (or their first ``FINGERPRINT_DIMS`` components)."""

    def __init__(self, index: NeighborIndex, q: np.ndarray, rids: np.ndarray, pos, sc) -> None:
        order = np.argsort(rids, kind="stable")
        self._index = index
        self._rids = rids[order]
        self._fp = np.ascontiguousarray(q[order, :FINGERPRINT_DIMS])
        self._pos, self._sc = pos[order, 0], sc[order, 0]

    def __getattr__(self, name):  # ntotal, payload, payload_for, keys, ...
        return getattr(self._index, name)

    def search(self, queries, query_row_ids, k: int = 1, exact_scores: bool = True):
        index = self._index
        if k != 1 or query_row_ids is None or not len(self._rids):
            return index.search(queries, query_row_ids, k, exact_scores)
        q = normalised(queries, index.dim)
        qrids = as_query_row_ids(query_row_ids, len(q))
        at = np.clip(np.searchsorted(self._rids, qrids), 0, len(self._rids) - 1)
        known = (self._rids[at] == qrids) & (self._fp[at] == q[:, :FINGERPRINT_DIMS]).all(axis=1)
        if len(qrids) != len(q) or not known.all():
            return index.search(queries, query_row_ids, k, exact_scores)
        pos = self._pos[at][:, None]
        if exact_scores:
            sc = pair_scores(index.vectors, q, pos, np.arange(len(q)))
            sc[pos < 0] = np.nan
        else:
            sc = self._sc[at][:, None]
        return resolve(pos, sc, index.keys, index.row_ids)


def plan_groups(sizes: list[int], max_rows: int = GROUP_ROWS) -> list[int]:
    """How many consecutive shards each group takes: as many as fit in
    ``max_rows`` rows (a larger shard makes a group of its own). Planned from
    the row counts up front, so no shard is read before its group starts."""
    counts, rows = [], 0
    for n in sizes:
        if counts and rows + n <= max_rows:
            counts[-1] += 1
            rows += n
        else:
            counts.append(1)
            rows = n
    return counts


def groups(views, counts: list[int]):
    """The (stem, view) items of ``views`` in lists of ``counts`` items."""
    it = iter(views)
    for k in counts:
        yield [next(it) for _ in range(k)]


def answer_ahead(group: list, scorers: dict, pools: dict, methods: list[str]) -> dict:
    """``pools`` with each searched pool answering the group's hinted queries."""
    wanted: dict[str, list] = {}
    for stem, view in group:
        for name in methods:
            method, scorer = catalog.get(name), scorers.get(name)
            if scorer is None:
                continue
            sides = method.pools(scorer)
            for pool, mask in method.queries(scorer, view.pairs, seed_key=stem).items():
                if pool in pools and pool in sides and mask.any():
                    vectors = view.pairs.image if sides[pool] == "image" else view.pairs.text
                    rids = view.pairs.row_ids
                    part = (vectors, rids) if mask.all() else (vectors[mask], rids[mask])
                    wanted.setdefault(pool, []).append(part)
    out = dict(pools)
    for pool, parts in wanted.items():
        rids = np.concatenate([r for _, r in parts])
        if len(np.unique(rids)) != len(rids):  # ambiguous by row id: no answers
            continue
        out[pool] = AnsweredPool(pools[pool], *_search_parts(pools[pool], parts))
    return out


def _search_parts(index: NeighborIndex, parts: list) -> tuple:
    """(normalised queries, row ids, positions, scores) of every part: a part
    of ``ALONE_ROWS`` or more is searched alone (no copy of a shard's
    vectors), the smaller ones together."""
    alone = [p for p in parts if len(p[1]) >= ALONE_ROWS]
    small = [p for p in parts if len(p[1]) < ALONE_ROWS]
    batches = [(v, r, False) for v, r in alone]
    if small:  # a fresh copy: normalised in place
        batches.append(
            (np.concatenate([v for v, _ in small]), np.concatenate([r for _, r in small]), True)
        )
    found = []
    for vectors, rids, owned in batches:
        pos, sc, q = index.positions(vectors, rids, 1, exact_scores=False, owned=owned)
        found.append((q[:, :FINGERPRINT_DIMS].copy(), rids, pos, sc))  # not a view: frees q
    return tuple(np.concatenate(col) for col in zip(*found, strict=True))

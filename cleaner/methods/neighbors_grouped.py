"""Inverted-list search by matrix products: the CPU search of an IVF pool.

An IVF index splits the pool into ``nlist`` lists (k-means cells) and
scans, for each query, only its ``nprobe`` nearest lists. faiss scans a
list vector by vector for each query, which streams the list from memory
once per query: measured on a 2^16 x 512 pool (2 cores), 130 ns per scanned
vector. Here the queries of a batch are *grouped by list* instead, and each
list is compared with all of its queries in one BLAS product, so a list is
read once per batch and the arithmetic runs at matrix-product speed: 3-7x
less CPU than faiss's ``IndexIVFFlat`` at the same nprobe and the same
recall (benchmarks/bench_scoring.py records the comparison). It needs large
query batches, which the pipeline gives it.

A query scans its ``nprobe`` nearest lists, or only those whose centroid
is within ``delta`` of its nearest one (:func:`_probe_lists`). Each
(query, list) block keeps its best two hits; a query's own row (same
row id) is excluded inside the block. The candidates of all probed lists
are merged into the best ``kk`` per query. The lists are shared out among
a small thread pool with single-threaded BLAS (:mod:`cleaner.methods.threads`),
each list compared with all the queries of a chunk that probe it.
"""

from __future__ import annotations

import math

import numpy as np

from cleaner.methods.threads import n_workers, parallel_map, single_threaded_blas

QUERY_CHUNK = 32_768  # queries planned and scanned together (bounds memory)
BLOCK_ELEMS = 1 << 22  # largest query-by-list similarity block (16 MiB of float32)


def _block_top(sims: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """(columns, values) of the ``kk`` largest entries of each row, best first;
    column -1 and value -inf where a row has fewer."""
    r, width = sims.shape
    take = min(kk, width)
    rows = np.arange(r)
    if take <= 2:
        cols = np.empty((r, take), dtype=np.int64)
        vals = np.empty((r, take), dtype=np.float32)
        for j in range(take):
            c = sims.argmax(axis=1)
            cols[:, j], vals[:, j] = c, sims[rows, c]
            sims[rows, c] = -np.inf
    else:
        part = np.argpartition(-sims, take - 1, axis=1)[:, :take]
        pv = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-pv, axis=1, kind="stable")
        cols, vals = np.take_along_axis(part, order, axis=1), np.take_along_axis(pv, order, axis=1)
    if take < kk:
        cols = np.pad(cols, ((0, 0), (0, kk - take)), constant_values=-1)
        vals = np.pad(vals, ((0, 0), (0, kk - take)), constant_values=-np.inf)
    cols = np.where(np.isneginf(vals), -1, cols)
    return cols, vals


def _probe_lists(cs: np.ndarray, nprobe: int, delta: float) -> np.ndarray:
    """(m, nprobe) lists to scan for each query, -1 where not scanned: its
    ``nprobe`` nearest centroids, less those more than ``delta`` (cosine)
    below its nearest one -- a query deep inside a cell scans fewer lists
    than one near a border (measured at 2^16 pool rows: recall@1 0.98 with
    1.6 lists on average, where a fixed nprobe needs 3)."""
    nlist = cs.shape[1]
    if nprobe >= nlist:
        probe = np.broadcast_to(np.arange(nlist), (len(cs), nlist)).copy()
    else:
        probe = np.argpartition(-cs, nprobe - 1, axis=1)[:, :nprobe]
    if np.isfinite(delta):
        sims = np.take_along_axis(cs, probe, axis=1)
        probe = np.where(sims >= sims.max(axis=1, keepdims=True) - delta, probe, -1)
    return probe


def _plan(lists, q: np.ndarray, nprobe: int, delta: float):
    """Which lists each query probes, as (query, probe slot) pairs sorted by
    list: (qi, slot, starts, slots per query) with list l's pairs at
    ``starts[l]:starts[l + 1]``."""
    flat = _probe_lists(q @ lists.centroids.T, nprobe, delta).reshape(-1)
    npr = len(flat) // max(1, len(q))
    keep = np.flatnonzero(flat >= 0)
    order = keep[np.argsort(flat[keep], kind="stable")]
    qi, slot = np.divmod(order, npr)
    starts = np.searchsorted(flat[order], np.arange(lists.nlist + 1))
    return qi, slot, starts, npr


def _scan(lists, q, self_pos, plan, kk, todo, cand_pos, cand_sc) -> None:
    """Compare the lists ``todo`` with their queries, one product per block;
    writes each (query, slot)'s best ``kk`` in place (disjoint per list)."""
    qi, slot, starts, _ = plan
    for lst in todo:
        lo, hi = int(lists.bounds[lst]), int(lists.bounds[lst + 1])
        a, b = starts[lst], starts[lst + 1]
        step = max(2, BLOCK_ELEMS // (hi - lo))
        for s in range(a, b, step):
            rows, slots = qi[s : min(b, s + step)], slot[s : min(b, s + step)]
            sims = q[rows] @ lists.vectors[lo:hi].T
            sp = self_pos[rows]
            own = np.flatnonzero((sp >= lo) & (sp < hi))
            sims[own, sp[own] - lo] = -np.inf
            cols, vals = _block_top(sims, kk)
            cand_pos[rows, slots] = np.where(cols >= 0, cols + lo, -1)
            cand_sc[rows, slots] = vals


def _balanced(work: np.ndarray, lists: np.ndarray, parts: int) -> list[np.ndarray]:
    """``lists`` split into ``parts`` sets of about equal ``work`` (largest first)."""
    load, sets = np.zeros(parts), [[] for _ in range(parts)]
    for i in np.argsort(-work, kind="stable"):
        j = int(np.argmin(load))
        sets[j].append(lists[i])
        load[j] += work[i]
    return [np.array(x, dtype=np.int64) for x in sets if x]


def _search_chunk(lists, q: np.ndarray, self_pos: np.ndarray, nprobe: int, delta: float, kk: int):
    """Top-``kk`` (positions, scores) of one chunk of queries; -1 / -inf where
    none. The lists are shared out among the threads, each list compared with
    all of the chunk's queries that probe it (larger products than splitting
    the queries)."""
    m = len(q)
    plan = _plan(lists, q, nprobe, delta)
    npr = plan[3]
    cand_pos = np.full((m, npr, kk), -1, dtype=np.int64)
    cand_sc = np.full((m, npr, kk), -np.inf, dtype=np.float32)
    sizes = np.diff(lists.bounds)
    busy = np.flatnonzero((np.diff(plan[2]) > 0) & (sizes > 0))
    work = np.diff(plan[2])[busy] * sizes[busy]
    sets = _balanced(work, busy, n_workers())
    parallel_map(lambda todo: _scan(lists, q, self_pos, plan, kk, todo, cand_pos, cand_sc), sets)
    return _merge(cand_pos.reshape(m, -1), cand_sc.reshape(m, -1), kk)


def _merge(pos: np.ndarray, sc: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
    """Best ``kk`` of each row's candidates (score descending, position ascending)."""
    if pos.shape[1] > kk:
        order = np.lexsort((pos, -sc), axis=1)[:, :kk]
        pos, sc = np.take_along_axis(pos, order, axis=1), np.take_along_axis(sc, order, axis=1)
    return pos, sc


class ListedVectors:
    """A pool's vectors sorted by inverted list, with the list centroids.

    ``vectors[bounds[l]:bounds[l + 1]]`` is list ``l``; ``centroids`` are
    (nlist, d) unit vectors.
    """

    def __init__(self, vectors: np.ndarray, bounds: np.ndarray, centroids: np.ndarray) -> None:
        self.vectors = vectors
        self.bounds = np.asarray(bounds, dtype=np.int64)
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.nlist = len(self.centroids)

    def mean_probes(self, q: np.ndarray, nprobe: int, delta: float = math.inf) -> float:
        """Lists scanned per query, on average, for these queries."""
        probe = _probe_lists(q @ self.centroids.T, int(min(max(1, nprobe), self.nlist)), delta)
        return float((probe >= 0).sum(axis=1).mean()) if len(q) else 0.0

    def search(
        self, q: np.ndarray, self_pos: np.ndarray, nprobe: int, kk: int, delta: float = math.inf
    ) -> tuple[np.ndarray, np.ndarray]:
        """(m, kk) positions (-1 = none) and float32 scores (-inf = none) of
        each query's best non-self hits among its ``nprobe`` nearest lists
        (those within ``delta`` of its nearest centroid)."""
        m = len(q)
        if m == 0 or len(self.vectors) == 0:
            return np.full((m, kk), -1, np.int64), np.full((m, kk), -np.inf, np.float32)
        nprobe = int(min(max(1, nprobe), self.nlist))
        with single_threaded_blas():
            parts = [
                _search_chunk(
                    self, q[s : s + QUERY_CHUNK], self_pos[s : s + QUERY_CHUNK], nprobe, delta, kk
                )
                for s in range(0, m, QUERY_CHUNK)
            ]
        return np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts])

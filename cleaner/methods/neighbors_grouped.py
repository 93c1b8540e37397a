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

Each (query, list) block keeps its best two hits; a query's own row (same
row id) is excluded inside the block. The candidates of all probed lists
are merged into the best ``kk`` per query. Batches of queries run on a
small thread pool with single-threaded BLAS (:mod:`cleaner.methods.threads`).
"""

from __future__ import annotations

import numpy as np

from cleaner.methods.threads import n_workers, parallel_map, single_threaded_blas

QUERY_CHUNK = 8192  # queries per work item (one thread at a time)
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


def _probe_lists(cs: np.ndarray, nprobe: int) -> np.ndarray:
    """(m, nprobe) lists nearest to each query, from its centroid similarities."""
    nlist = cs.shape[1]
    if nprobe >= nlist:
        return np.broadcast_to(np.arange(nlist), (len(cs), nlist))
    return np.argpartition(-cs, nprobe - 1, axis=1)[:, :nprobe]


def _search_chunk(lists, q: np.ndarray, self_pos: np.ndarray, nprobe: int, kk: int):
    """Top-``kk`` (positions, scores) of one chunk of queries; -1 / -inf where none."""
    m = len(q)
    probe = _probe_lists(q @ lists.centroids.T, nprobe)
    npr = probe.shape[1]
    li = probe.reshape(-1)
    order = np.argsort(li, kind="stable")
    li = li[order]
    qi, slot = np.divmod(order, npr)
    starts = np.searchsorted(li, np.arange(lists.nlist + 1))
    cand_pos = np.full((m, npr, kk), -1, dtype=np.int64)
    cand_sc = np.full((m, npr, kk), -np.inf, dtype=np.float32)
    for lst in np.flatnonzero(np.diff(starts)):
        lo, hi = int(lists.bounds[lst]), int(lists.bounds[lst + 1])
        if hi == lo:
            continue
        a, b = starts[lst], starts[lst + 1]
        step = max(1, BLOCK_ELEMS // (hi - lo))
        for s in range(a, b, step):
            rows, slots = qi[s : min(b, s + step)], slot[s : min(b, s + step)]
            sims = q[rows] @ lists.vectors[lo:hi].T
            sp = self_pos[rows]
            own = np.flatnonzero((sp >= lo) & (sp < hi))
            sims[own, sp[own] - lo] = -np.inf
            cols, vals = _block_top(sims, kk)
            cand_pos[rows, slots] = np.where(cols >= 0, cols + lo, -1)
            cand_sc[rows, slots] = vals
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

    def search(
        self, q: np.ndarray, self_pos: np.ndarray, nprobe: int, kk: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(m, kk) positions (-1 = none) and float32 scores (-inf = none) of
        each query's best non-self hits among its ``nprobe`` nearest lists."""
        m = len(q)
        if m == 0 or len(self.vectors) == 0:
            return np.full((m, kk), -1, np.int64), np.full((m, kk), -np.inf, np.float32)
        nprobe = int(min(max(1, nprobe), self.nlist))
        size = min(QUERY_CHUNK, max(256, -(-m // n_workers())))
        starts = range(0, m, size)

        def one(s: int):
            return _search_chunk(self, q[s : s + size], self_pos[s : s + size], nprobe, kk)

        with single_threaded_blas():
            parts = parallel_map(one, starts)
        return np.concatenate([p for p, _ in parts]), np.concatenate([s for _, s in parts])

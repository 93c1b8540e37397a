"""Nearest pool vectors of the other modality, cheaply: CSLS's side statistics.

CSLS needs, for every row, the k+1 largest cosines between its image and
the pool's texts (and its text and the pool's images). Exact search costs
rows x pool x d multiply-adds: at a pool of 2^14 and 512-d, 173 s per 1M
rows on 2 cores -- far more than the rest of the scoring. Two savings,
each checked on Flickr8k + MiniLM before it was adopted (AUROC and clean
kept at 97.5% noise caught as with exact search; ``bench_match.py``
records the result):

- **A low-dimensional projection.** Pool and queries are projected on the
  top ``dim`` right singular vectors of the pool (both modalities stacked,
  uncentred: the subspace that keeps inner products best), and the side
  statistic is the mean of the k largest *projected* cosines. It is a
  hubness estimate in its own right, used alike for real and shuffled pairs
  (so the calibration sees it as it is); only the pair's own cosine in the
  score stays exact. At 128 dims of MiniLM's 384 it matched the exact
  statistic; at 64 it lost a little.
- **Cells searched by matrix products.** Above ``exact_max`` pool rows,
  the projected pool is split into k-means cells; every query goes to its
  nearest cell and is compared with the rows of the ``nprobe`` cells
  nearest to that cell's centroid, all queries of a cell in one BLAS
  product and one partial sort (large blocks on all cores, no per-query
  bookkeeping).

The search returns values only: the candidate a pair must not count (its
own text or image, when that is a pool member) is recognised by its value,
the projected cosine of the pair (:func:`cleaner.methods.match.stats`).
Everything is seeded and depends only on the pool, so a restored scorer
rebuilds the same search from the stored pool vectors.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from cleaner.methods.threads import n_workers, parallel_map, single_threaded_blas

_TRAIN_PER_LIST = 64
_BASIS_ROWS = 4096  # per side: a principal subspace needs far fewer rows than the pool
_BLOCK_ELEMS = 1 << 22  # largest (queries x candidates) block: 16 MiB of float32
# up to this many values per row are picked by repeated argmax passes: at 4
# of 1,259 candidates 5x faster than a partition plus sort (measured on 20k
# rows); more are sorted
_ARGMAX_TAKE = 8
_TIE = 1e-5  # products this close may rank either way in another batch


def projection(image: np.ndarray, text: np.ndarray, dim: int) -> np.ndarray | None:
    """(d, dim) basis keeping the pool's inner products best, or None when
    ``dim`` does not reduce anything. From the first ``_BASIS_ROWS`` rows of
    each side (the pool is in seeded hash order: a random sample of it)."""
    d = image.shape[1]
    if dim >= d:
        return None
    stacked = np.concatenate([image[:_BASIS_ROWS], text[:_BASIS_ROWS]]).astype(np.float64)
    # eigenvectors of the (uncentred) second moment = right singular vectors
    vals, vecs = np.linalg.eigh(stacked.T @ stacked)
    top = np.argsort(vals)[::-1][:dim]
    return np.ascontiguousarray(vecs[:, top], dtype=np.float32)


def default_nlist(pool: int) -> int:
    """About sqrt(pool) cells (a power of two) of at least 64 rows."""
    return max(1, min(2 ** round(math.log2(max(1.0, math.sqrt(pool)))), pool // _TRAIN_PER_LIST))


class PoolSearch:
    """The ``kk`` largest (projected) inner products of queries with one
    side of the pool.

    Parameters
    ----------
    vectors : (p, d) float32 unit vectors (the pool side being searched).
    basis : (d, dim) projection, or None (full space).
    nlist, nprobe : cells over the pool and cells compared per query;
        ``nlist <= 1`` compares every pool row.
    seed : k-means seed.
    """

    def __init__(self, vectors, basis, nlist: int, nprobe: int, seed: int):
        self.basis = basis
        self.proj = self.project(np.ascontiguousarray(vectors, dtype=np.float32))
        self.n = len(self.proj)
        self.centroids, self.cells, self.cell_rows = None, None, None
        if nlist > 1 and self.n > 1:
            from cleaner.methods.neighbors_ivf import train_lists  # faiss: imported when needed

            centroids, assign, order, _ = train_lists(self.proj, nlist, seed, _TRAIN_PER_LIST)
            near = np.argsort(-(centroids @ centroids.T), axis=1, kind="stable")
            near = near[:, : max(1, min(nprobe, len(centroids)))]
            members = [np.flatnonzero(assign == c) for c in range(len(centroids))]
            # each cell's candidates (pool positions), their vectors stored
            # contiguously: one product per cell
            self.cell_rows = [np.concatenate([members[j] for j in row]) for row in near]
            # (dim, candidates) contiguous: the products run 6% faster than
            # against a transposed view
            self.cells = [np.ascontiguousarray(self.proj[rows].T) for rows in self.cell_rows]
            self.centroids = centroids

    def _cells_parallel(self, q: np.ndarray) -> np.ndarray:
        """:meth:`_cells_of` on the worker threads (2M queries x 128
        centroids took 1.4 s on one)."""
        cuts = np.linspace(0, len(q), max(1, min(n_workers(), len(q) // 8192)) + 1).astype(int)
        with single_threaded_blas():
            parts = parallel_map(lambda c: self._cells_of(q[c[0] : c[1]]), zip(cuts, cuts[1:]))
        return np.concatenate(parts)

    def _cells_of(self, q: np.ndarray) -> np.ndarray:
        """Each query's nearest centroid; where the two nearest are within
        rounding of each other, decided by exact row-wise products (the
        same cell however the queries are batched)."""
        cell = np.empty(len(q), dtype=np.int64)
        for s in range(0, len(q), 65_536):
            pos, close = largest_at(q[s : s + 65_536] @ self.centroids.T, 1)
            cell[s : s + 65_536] = pos[:, 0]
            if len(close):
                exact = np.multiply(q[s + close, None, :], self.centroids[None], dtype=np.float32)
                cell[s + close] = exact.sum(axis=-1).argmax(axis=1)
        return cell

    def _exact(self, q: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """q[i] . pool[pos[i, j]] one pair at a time, best first: what a
        row gets does not depend on the rows it was batched with (a matrix
        product's rounding does), so shards scored together or alone agree."""
        vals = np.multiply(self.proj[pos], q[:, None, :], dtype=np.float32).sum(axis=-1)
        return -np.sort(-vals, axis=1)

    def project(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return x if self.basis is None else np.ascontiguousarray(x @ self.basis)

    def project_parts(
        self, parts: list[np.ndarray], block: int
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """The parts' rows projected (one array) and their cells (None without
        cells), on the worker threads. Each part is projected in blocks of
        ``block`` rows from its start, as :meth:`project` on that block
        would: a matrix product's rounding of a row depends on the rows
        around it (a part's edge rows came out different in other blocks)."""
        starts = np.cumsum([0] + [len(x) for x in parts])
        proj = np.empty((starts[-1], self.proj.shape[1]), dtype=np.float32)
        cells = None if self.cells is None else np.empty(starts[-1], dtype=np.int64)
        items = [(x, s, at + s) for x, at in zip(parts, starts) for s in range(0, len(x), block)]

        def run(item) -> None:
            x, s, at = item
            rows = x[s : s + block]
            out = proj[at : at + len(rows)]
            out[:] = self.project(rows)
            if cells is not None:
                cells[at : at + len(out)] = self._cells_of(out)

        with single_threaded_blas():
            parallel_map(run, items)
        return proj, cells

    def top_values(
        self, q: np.ndarray, kk: int, short: np.ndarray | None = None, cells=None
    ) -> np.ndarray:
        """(m, kk) largest inner products of the projected queries ``q``
        (from :meth:`project`), best first; -inf where the pool has fewer.
        ``short``: rows that need only the kk-1 largest (CSLS: a row outside
        the pool has no own pair to skip); their last column stays -inf. At
        k = 1 that is one argmax pass and one exact product a row, not two.
        ``cells``: the queries' cells when known (:meth:`project_parts`)."""
        m = len(q)
        out = np.full((m, kk), -np.inf, dtype=np.float32)
        if m == 0 or self.n == 0:
            return out
        if self.cells is None:
            groups = [(np.arange(m), self.proj.T, None)]
        else:
            cell = cells if cells is not None else self._cells_parallel(q)
            order = np.argsort(cell, kind="stable")
            bounds = np.searchsorted(cell[order], np.arange(len(self.cells) + 1))
            groups = [(order[bounds[c] : bounds[c + 1]], self.cells[c], self.cell_rows[c])
                      for c in range(len(self.cells)) if bounds[c + 1] > bounds[c]]  # fmt: skip
        work = []
        for rows, cand, at in groups:
            step = max(1, _BLOCK_ELEMS // max(1, cand.shape[1]))
            for part, take in _by_need(rows, short, kk):
                work += [(part[s : s + step], cand, at, take) for s in range(0, len(part), step)]

        def block(item) -> None:
            rows, cand, at, take = item
            qb = q[rows]
            sims = qb @ cand
            pos, tied = largest_at(sims, min(take, cand.shape[1]))
            vals = self._exact(qb, pos if at is None else at[pos])
            if len(tied):  # ranked within rounding: those rows' close ones exactly
                vals[tied] = _window_top(
                    self.proj, qb[tied], sims[tied], pos[tied], at, vals[tied, -1]
                )
            out[rows, : pos.shape[1]] = vals

        # each thread takes the next block when it is free (no task per block:
        # per-task overhead; no fixed split: blocks differ and threads stall)
        workers = min(n_workers(), len(work))
        queue, lock = iter(work), threading.Lock()

        def pull(_) -> None:
            while (item := _next(queue, lock)) is not None:
                block(item)

        with single_threaded_blas():
            parallel_map(pull, range(workers), workers=workers)
        return out


def _by_need(rows: np.ndarray, short: np.ndarray | None, kk: int) -> list[tuple]:
    """``rows`` split into (rows, values needed): the ``short`` ones kk-1."""
    if short is None or kk < 2:
        return [(rows, kk)]
    less = short[rows]
    return [(r, t) for r, t in ((rows[~less], kk), (rows[less], kk - 1)) if len(r)]


def _next(queue, lock: threading.Lock):
    with lock:
        return next(queue, None)


def largest_at(sims: np.ndarray, take: int) -> tuple[np.ndarray, np.ndarray]:
    """(m, take) column positions of the largest values of each row of
    ``sims`` (overwritten), and the rows whose take-th and next largest are
    within :data:`_TIE` (a product cut another way could rank them the other
    way round)."""
    rows = np.arange(len(sims))
    if take > _ARGMAX_TAKE or take >= sims.shape[1]:
        top = np.argsort(-sims, axis=1, kind="stable")[:, : take + 1]
        vals = np.take_along_axis(sims, top, axis=1)
        last, nxt = vals[:, take - 1], vals[:, take] if take < sims.shape[1] else None
        pos = top[:, :take]
    else:
        pos = np.empty((len(sims), take), dtype=np.int64)
        for j in range(take):
            pos[:, j] = at = sims.argmax(axis=1)
            last = sims[rows, at]
            sims[rows, at] = -np.inf
        nxt = sims.max(axis=1)
    tied = np.empty(0, np.int64) if nxt is None else np.flatnonzero(last - nxt < _TIE)
    return pos, tied


def _window_top(proj, q, sims, pos, at, floor) -> np.ndarray:
    """The ``pos.shape[1]`` largest row-wise products of each query among
    its taken candidates ``pos`` and those whose (matrix-product) value in
    ``sims`` is within 2 _TIE of ``floor``, the least exact value taken: a
    candidate further down is below every taken one, rounding included.
    Candidates are block positions, ``at`` maps them to rows of ``proj``
    (None: the same); products as :meth:`PoolSearch._exact` forms them."""
    take = pos.shape[1]
    inside = sims >= (floor - 2 * _TIE)[:, None]
    inside[np.arange(len(q))[:, None], pos] = True
    counts = inside.sum(axis=1)
    row, col = np.nonzero(inside)
    slot = np.arange(len(row)) - np.repeat(np.cumsum(counts) - counts, counts)
    grid = np.full((len(q), int(counts.max())), -1, dtype=np.int64)
    grid[row, slot] = col
    grid_pool = np.maximum(grid, 0) if at is None else at[np.maximum(grid, 0)]
    vals = np.multiply(proj[grid_pool], q[:, None, :], dtype=np.float32).sum(axis=-1)
    vals[grid < 0] = -np.inf
    return -np.sort(-vals, axis=1)[:, :take]

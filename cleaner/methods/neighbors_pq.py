"""IVF-PQ fast-scan candidates, re-ranked exactly on the pool's own vectors.

The grouped IVF search (:mod:`cleaner.methods.neighbors_grouped`) compares
float vectors: cheapest when the k-means cells follow the data (the scoring
benchmark's mixture: 1.6 cells per query for recall@1 0.98). On data whose
neighbourhoods cut across cells -- ``benchmarks/bench_index.py``'s mixture
calibrated on real sentence embeddings needs 32-64 of 128-512 cells --
scanning 4-bit product-quantised codes with faiss's fast-scan kernels and
re-ranking the best ``k_factor x k`` of them exactly is cheaper:
bench_index's pick, ``IVF{~sqrt n},PQ{d/4}x4fs,RFlat``. Here the re-ranking
reads the pool's float vectors the index already holds (no second copy, as
``IndexRefineFlat`` would keep), so the codes add d/8 bytes per row.

The pipeline tries this only for a pool whose grouped search needs many
cells per query (:func:`pipelines.index_stage.tuned`) and keeps whichever
compares fewer vector-equivalents per query by :func:`pq_cost` -- a count,
so a resumed job chooses the same. Cost ratios measured on the 2-core
machine: a fast-scan code costs ~0.55 of a float vector compared in a
matrix product (bench_index: 68.6 us of CPU for 8,192 codes and 32
re-ranked rows; the grouped search: 14.7 ns per vector), a re-ranked row
~10 (a random 2 KiB read and a dot product).
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from cleaner.methods.neighbors_ivf import tune_nprobe
from cleaner.methods.neighbors_search import pair_scores

CODE_COST = 0.55  # one fast-scan code, in float vectors compared by BLAS
REFINE_COST = 10.0  # one re-ranked row, likewise
NPROBES = (8, 16, 32, 64, 128)
K_FACTORS = (8, 16, 32, 64)


def pq_nlist(n: int) -> int:
    """bench_index's 'sqrt' rule: 2^ceil(log2 sqrt(n)), at least 39 rows per list."""
    return max(1, min(2 ** math.ceil(math.log2(max(2.0, math.sqrt(n)))), n // 39))


def pq_cost(nlist: int, nprobe: int, k_factor: int, kk: int, n: int) -> float:
    return nlist + min(nprobe, nlist) * n / max(1, nlist) * CODE_COST + k_factor * kk * REFINE_COST


def pq_points(nlist: int, n: int, kk: int = 2) -> list[tuple[int, int]]:
    """(nprobe, k_factor) settings in increasing :func:`pq_cost`."""
    points = {(min(p, nlist), f) for p in NPROBES for f in K_FACTORS}
    return sorted(points, key=lambda pf: (pq_cost(nlist, *pf, kk, n), pf))


def _subquantizers(dim: int) -> int:
    """d/4 sub-quantizers (bench_index's pick), or the largest divisor of d below it."""
    return next(m for m in range(max(1, dim // 4), 0, -1) if dim % m == 0)


class PQCandidates:
    """A faiss ``IVF{nlist},PQ{m}x4fs`` index over a pool's vectors (ids =
    positions in the pool), searched for ``k_factor x kk`` candidates that
    are then re-ranked on the float vectors, the query's own row excluded."""

    def __init__(self, vectors: np.ndarray, seed: int, train_points_per_centroid: int = 64):
        n, dim = vectors.shape
        self.nlist = pq_nlist(n)
        self.key = f"IVF{self.nlist},PQ{_subquantizers(dim)}x4fs"
        index = faiss.index_factory(dim, self.key, faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.seed = seed
        ivf.cp.spherical = True
        sample = np.sort(np.random.default_rng(seed).choice(
            n, size=min(n, train_points_per_centroid * self.nlist), replace=False))  # fmt: skip
        index.train(np.ascontiguousarray(vectors[sample]))
        index.add(vectors)
        self.index = index

    def __getstate__(self) -> dict:
        return {**self.__dict__, "index": faiss.serialize_index(self.index)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.index = faiss.deserialize_index(state["index"])

    def search(self, vectors, q, self_pos, kk: int, point: tuple[int, int]):
        """(m, kk) positions (-1 = none) and exact float32 scores (-inf = none)."""
        nprobe, k_factor = point
        faiss.extract_index_ivf(self.index).nprobe = int(nprobe)
        _, cand = self.index.search(q, min(self.index.ntotal, k_factor * kk))
        cand = np.where(cand == self_pos[:, None], -1, cand)
        exact = pair_scores(vectors, q, cand, np.arange(len(q)))
        order = np.lexsort((np.where(cand >= 0, cand, np.iinfo(np.int64).max), -exact))[:, :kk]
        pos, sc = np.take_along_axis(cand, order, axis=1), np.take_along_axis(exact, order, axis=1)
        pos = np.where(np.isneginf(sc), -1, pos)
        if pos.shape[1] < kk:
            pad = kk - pos.shape[1]
            pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
            sc = np.pad(sc, ((0, 0), (0, pad)), constant_values=-np.inf)
        return pos, sc


def tune_pq(index, q: np.ndarray, qrids: np.ndarray, target: float):
    """(PQCandidates, its (nprobe, k_factor), recall record, cost) for a
    finalized IVF NeighborIndex, tuned like its own probing (same halves,
    same exact reference: the index scanning every list)."""
    pq = PQCandidates(index.vectors, index.seed, index.train_points_per_centroid)
    self_pos = index._self_positions

    def search(a, b, point):
        return pq.search(index.vectors, a, self_pos(b), 2, point)

    exact = (index.nlist, math.inf)
    point, recall = tune_nprobe(
        search,
        lambda a, b: index._top1(a, b, exact),
        q,
        qrids,
        pq_points(pq.nlist, index.ntotal),
        target,
    )
    return pq, point, recall, pq_cost(pq.nlist, *point, 2, index.ntotal)

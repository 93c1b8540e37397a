"""The search side of :class:`cleaner.methods.neighbors.NeighborIndex`, as plain functions.

Top-k inner-product search with the query's own row excluded, the mapping of
index positions back to keys and row ids, and the optional GPU copy of a
finished faiss index. They need only a faiss index and the row-id array, not
the incremental build state, so they live apart from the index class.

Same hits in any batch: a matrix product's rounding depends on the shapes
it is cut into (BLAS kernels, faiss switching to BLAS above 20 queries), so
a query's similarities can differ in the last bit between a search of its
shard alone (a Ray task) and one of several shards together, or with its
rows in another order. :func:`rescore` therefore recomputes the returned
similarities row by row (one float32 product and pairwise sum per pair,
independent of the batch) and re-ranks the candidates exactly where the
product's ranking was within :data:`TIE_EPS` -- so keys and scores are
bit-identical whatever the batch.
"""

from __future__ import annotations

import faiss
import numpy as np

# Candidates closer than this (cosine) are re-ranked by exact row-wise
# products; a float32 512-d dot product is off by ~1e-7, far below it.
TIE_EPS = 1e-4
RESCORE_ELEMS = 1 << 22  # floats gathered at a time when rescoring (16 MiB)


def normalised(vectors: np.ndarray, dim: int, copy: bool = True) -> np.ndarray:
    """float32, C-contiguous, L2-normalised copy of ``vectors`` (n, dim);
    ``copy=False`` normalises a float32 C-contiguous array in place."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True if copy else None, ndmin=2)
    if x.shape[1] != dim:
        raise ValueError(f"vectors have dimension {x.shape[1]}, index has {dim}")
    if len(x):
        # Inner product equals cosine only on unit vectors; the embeddings
        # should already be normalised, this guards against drift.
        faiss.normalize_L2(x)
    return x


def as_query_row_ids(row_ids: np.ndarray | None, m: int) -> np.ndarray:
    """int64 row ids of ``m`` queries; ``None`` gives an id no indexed row has."""
    if row_ids is None:
        return np.full(m, np.iinfo(np.int64).min, dtype=np.int64)
    return np.asarray(row_ids, dtype=np.int64).reshape(-1)


def search_positions(
    index: faiss.Index, row_ids: np.ndarray, q: np.ndarray, qrids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (-1 = none) and scores of the k best non-self hits.

    ``row_ids`` are the indexed rows' ids, by position; a hit whose id equals
    its query's ``qrids`` entry is the query itself and is dropped.
    """
    m = len(q)
    ntotal = int(index.ntotal)
    if m == 0 or ntotal == 0:
        return np.full((m, k), -1, dtype=np.int64), np.full((m, k), np.nan, np.float32)
    # One extra hit so that k remain after dropping the query itself.
    kk = min(k + 1, ntotal)
    d, i = index.search(q, kk)
    valid = i >= 0
    hit_rids = np.where(valid, row_ids[np.where(valid, i, 0)], -1)
    valid &= hit_rids != qrids[:, None]
    # Stable sort moves valid hits first while keeping score order.
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    pos = np.take_along_axis(np.where(valid, i, -1), order, axis=1)
    sc = np.take_along_axis(np.where(valid, d, np.nan), order, axis=1).astype(np.float32)
    if pos.shape[1] < k:  # fewer indexed rows than k
        pad = k - pos.shape[1]
        pos = np.pad(pos, ((0, 0), (0, pad)), constant_values=-1)
        sc = np.pad(sc, ((0, 0), (0, pad)), constant_values=np.nan)
    return pos, sc


def rescore(
    vectors: np.ndarray, q: np.ndarray, pos: np.ndarray, sc: np.ndarray, k: int, scores: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of each query's ``k + 1`` candidates, batch-independent.

    ``pos`` / ``sc``: (m, k + 1) candidate positions in ``vectors`` (-1 =
    none) and their approximate scores, best first. Rows whose candidates
    are within :data:`TIE_EPS` of each other are re-ranked by exact scores
    (ties: lower position first); the returned scores are exact when
    ``scores`` (else the approximate ones). Missing hits: -1 and NaN.
    """
    pos, sc = pos.copy(), sc.astype(np.float32, copy=True)
    found = pos >= 0
    with np.errstate(invalid="ignore"):  # -inf - -inf between two missing hits
        gaps = np.abs(np.diff(np.where(found, sc, -np.inf), axis=1))
    tied = np.flatnonzero((gaps < TIE_EPS).any(axis=1)) if pos.shape[1] > 1 else np.empty(0, int)
    if len(tied):
        exact = pair_scores(vectors, q, pos[tied], tied)
        order = np.lexsort((np.where(pos[tied] >= 0, pos[tied], np.iinfo(np.int64).max), -exact))
        pos[tied] = np.take_along_axis(pos[tied], order, axis=1)
        sc[tied] = np.take_along_axis(exact, order, axis=1)
    pos, sc = pos[:, :k], sc[:, :k]
    if scores:
        rest = np.setdiff1d(np.arange(len(pos)), tied, assume_unique=True)
        if len(rest):
            sc[rest] = pair_scores(vectors, q, pos[rest], rest)
    sc[pos < 0] = np.nan
    return pos, sc


def pair_scores(
    vectors: np.ndarray, q: np.ndarray, pos: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """float32 q[rows[i]] . vectors[pos[i, j]] one pair at a time (-inf where pos is -1)."""
    out = np.full(pos.shape, -np.inf, dtype=np.float32)
    step = max(1, RESCORE_ELEMS // max(1, pos.shape[1] * q.shape[1]))
    for s in range(0, len(pos), step):
        p = pos[s : s + step]
        v = vectors[np.where(p >= 0, p, 0)]
        prod = np.multiply(v, q[rows[s : s + step], None, :], dtype=np.float32)
        out[s : s + step] = np.where(p >= 0, prod.sum(axis=-1), -np.inf)
    return out


def resolve(
    pos: np.ndarray, scores: np.ndarray, keys: np.ndarray, row_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(keys, scores, row ids) of the hits at ``pos``; None / -1 where ``pos`` is -1."""
    found = pos >= 0
    safe = np.where(found, pos, 0)
    out_keys = np.full(pos.shape, None, dtype=object)
    out_rids = np.full(pos.shape, -1, dtype=np.int64)
    if len(row_ids):
        out_keys[found] = keys[safe[found]]
        out_rids[found] = row_ids[safe[found]]
    return out_keys, scores, out_rids


def gpu_available() -> bool:
    """True when this faiss build sees a GPU (faiss-gpu, the ``gpu`` extra)."""
    try:
        return faiss.get_num_gpus() > 0
    except (AttributeError, RuntimeError):
        return False


def gpu_search_index(index):
    """A search function on a faiss GPU copy of a finalized NeighborIndex
    (``IndexFlatIP``, or an ``IndexIVFFlat`` with the same centroids), or
    None when there is no usable GPU. The function takes (queries, row ids,
    kk, nprobe) and returns (positions, scores) like the CPU search; faiss
    numbers the vectors in the order they are added, which is the index's."""
    try:
        resources = faiss.StandardGpuResources()
        if index.kind == "flat":
            cpu = faiss.IndexFlatIP(index.dim)
        else:
            quantizer = faiss.IndexFlatIP(index.dim)
            quantizer.add(index._lists.centroids)
            cpu = faiss.IndexIVFFlat(quantizer, index.dim, index.nlist, faiss.METRIC_INNER_PRODUCT)
            cpu.is_trained = True
        cpu.add(index.vectors)
        gpu = faiss.index_cpu_to_gpu(resources, 0, cpu)
        params = faiss.GpuParameterSpace() if index.kind != "flat" else None
    except (AttributeError, RuntimeError):  # faiss-cpu, or a GPU that cannot hold it
        return None

    def search(q: np.ndarray, qrids: np.ndarray, kk: int, nprobe: int | None):
        if params is not None and nprobe:
            params.set_index_parameter(gpu, "nprobe", int(nprobe))
        pos, sc = search_positions(gpu, index.row_ids, q, qrids, kk)
        return pos, np.where(pos >= 0, sc, -np.inf).astype(np.float32)

    search.keep_alive = (resources, cpu, gpu)  # the GPU index needs them alive
    return search

"""The search side of :class:`cleaner.methods.neighbors.NeighborIndex`, as plain functions.

Top-k inner-product search with the query's own row excluded, the mapping of
index positions back to keys and row ids, and the optional GPU copy of a
finished faiss index. They need only a faiss index and the row-id array, not
the incremental build state, so they live apart from the index class; the
recall check (:mod:`cleaner.methods.neighbors_ivf`) reuses
:func:`search_positions` on the exact CPU index.
"""

from __future__ import annotations

import faiss
import numpy as np


def normalised(vectors: np.ndarray, dim: int) -> np.ndarray:
    """float32, C-contiguous, L2-normalised copy of ``vectors`` (n, dim)."""
    x = np.array(vectors, dtype=np.float32, order="C", copy=True, ndmin=2)
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


def to_gpu_if_available(
    index: faiss.Index, use_gpu: bool | None, nprobe: int | None
) -> tuple[faiss.Index, object | None]:
    """A GPU copy of ``index`` and its resources, or ``(index, None)``.

    ``nprobe`` (IVF only, else None) is set on the copy, which does not
    inherit it.
    """
    if use_gpu is False or index.ntotal == 0:
        return index, None
    try:
        if faiss.get_num_gpus() <= 0:
            return index, None
        resources = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(resources, 0, index)
        if nprobe is not None:
            gpu_index.nprobe = nprobe
        return gpu_index, resources
    except (AttributeError, RuntimeError):
        # faiss-cpu build, or a GPU that cannot hold the index.
        return index, None

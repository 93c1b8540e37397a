"""The approximate side of :class:`cleaner.methods.neighbors.NeighborIndex`: IVF sizing, build, recall.

An index past its exact threshold becomes a faiss ``IndexIVFFlat``; when to
switch, how many lists, how the coarse quantiser is trained and how well the
result agrees with exact search are decisions of their own, made once per
index, so they live here rather than in the incremental index class.

IVF settings
------------
- ``nlist = round(4 * sqrt(N))`` with N = ``max(expected_n, vectors added
  so far)`` -- the usual faiss rule of thumb. Pass ``expected_n`` when the
  final size is known; otherwise N is the size at the switch and the lists
  grow longer afterwards (slower search, not lower recall). ``nlist`` is
  capped so that every centroid gets at least 39 training points (faiss's
  own minimum).
- Training sample: ``train_points_per_centroid * nlist`` staged vectors
  drawn with ``seed`` (all of them if fewer), spherical k-means (centroids
  renormalised, the right choice for inner product on the unit sphere).
- ``nprobe``: see :func:`default_nprobe`. :meth:`NeighborIndex.measure_recall`
  checks recall on a sample (:func:`recall_against_exact`) and records the
  result in :meth:`NeighborIndex.describe`.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from cleaner.methods.neighbors_search import search_positions

# faiss warns below 39 training points per centroid; we never go below it.
MIN_POINTS_PER_CENTROID = 39
# Chunk size (rows) used when moving staged vectors into the IVF index.
MOVE_CHUNK = 65_536


def default_nlist(n: int) -> int:
    """The ``4 * sqrt(n)`` rule for the number of IVF lists (at least 1)."""
    return max(1, int(round(4.0 * math.sqrt(max(n, 1)))))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query: ``ceil(sqrt(nlist))``, at most ``nlist``.

    Measured on 100k clustered 512-d vectors (nlist 1265): recall@1 against
    exact search 1.0 at 2*sqrt (72 lists), 0.9998 at sqrt (36), 0.987 at
    sqrt/2 (18), 0.75 at 8 (benchmarks/nprobe_sweep.py); search time halves
    with each halving. sqrt keeps recall well above the 0.95 we require at
    half the cost; every job measures and records its own recall anyway."""
    return max(1, min(nlist, math.ceil(math.sqrt(nlist))))


def switch_nlist(
    n: int, expected_n: int | None, nlist_setting: int | None, force: bool
) -> int | None:
    """nlist to build an IVF index with from ``n`` staged vectors, or None to keep staging.

    Staging goes on until the quantiser can be trained for the planned
    nlist (or the expected size is reached); ``force`` (finalize) builds now.
    """
    planned = nlist_setting or default_nlist(max(expected_n or 0, n))
    needed = min(max(expected_n or 0, n), MIN_POINTS_PER_CENTROID * planned)
    if n < needed and not force:
        return None
    return max(1, min(planned, n // MIN_POINTS_PER_CENTROID))


def build_ivf(
    flat: faiss.IndexFlatIP, dim: int, nlist: int, seed: int, train_points_per_centroid: int
) -> tuple[faiss.IndexIVFFlat, faiss.IndexFlatIP, int]:
    """An ``IndexIVFFlat`` holding ``flat``'s vectors: (ivf, its quantizer, n_train).

    The caller must keep the quantizer alive: the IVF index does not own it.
    """
    n = flat.ntotal
    # Zero-copy view of the flat index's storage.
    staged = faiss.rev_swig_ptr(flat.get_xb(), n * dim).reshape(n, dim)
    rng = np.random.default_rng(seed)
    n_train = min(n, train_points_per_centroid * nlist)
    sample = np.sort(rng.choice(n, size=n_train, replace=False))
    train = np.ascontiguousarray(staged[sample])

    quantizer = faiss.IndexFlatIP(dim)
    ivf = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = seed
    ivf.cp.spherical = True
    ivf.train(train)
    del train
    for start in range(0, n, MOVE_CHUNK):
        ivf.add(np.ascontiguousarray(staged[start : start + MOVE_CHUNK]))
    del staged
    return ivf, quantizer, int(n_train)


def recall_against_exact(
    search_index: faiss.Index,
    cpu_ivf: faiss.IndexIVFFlat,
    row_ids: np.ndarray,
    q: np.ndarray,
    qrids: np.ndarray,
    k: int,
) -> float:
    """Mean |approx top-k ∩ exact top-k| / k over the queries ``q`` (NaN if none).

    Exact is ``cpu_ivf`` scanning all of its lists (``nprobe = nlist``),
    which for ``IndexIVFFlat`` is an exact search; its nprobe is restored.
    """
    approx, _ = search_positions(search_index, row_ids, q, qrids, k)
    nprobe = cpu_ivf.nprobe
    cpu_ivf.nprobe = cpu_ivf.nlist
    try:
        exact, _ = search_positions(cpu_ivf, row_ids, q, qrids, k)
    finally:
        cpu_ivf.nprobe = nprobe
    hits = [
        len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist()))
        for a, e in zip(approx, exact, strict=True)
    ]
    return float(np.mean(hits) / k) if len(q) else float("nan")

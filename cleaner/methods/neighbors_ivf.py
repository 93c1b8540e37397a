"""The approximate side of :class:`cleaner.methods.neighbors.NeighborIndex`:
IVF sizing, the inverted lists, recall against exact search and the
nprobe that reaches a recall target.

IVF settings
------------
- ``nlist = round(sqrt(N) / 2)`` -- fewer, longer lists than faiss's usual
  ``4 * sqrt(N)``, because lists are compared with their queries by matrix
  products (:mod:`cleaner.methods.neighbors_grouped`), where a longer list
  costs little more per query and a finer partition needs a larger nprobe
  for the same recall; capped so that every centroid gets at least 39
  training points (faiss's own minimum). Measured on a 2^16 x 512 pool of
  the scoring benchmark's mixture: nlist 128 reached recall@1 0.976 at
  nprobe 2 for 45 us of CPU per query, nlist 256 needed nprobe 4 (57 us),
  nlist 64 with nprobe 2 0.982 at 43 us.
- Training: spherical k-means (faiss, 10 iterations, ``seed``) on a seeded
  sample of at most ``train_points_per_centroid * nlist`` pool vectors
  (64 per centroid by default, never the whole pool when it is bigger;
  faiss subsamples to 256 per centroid anyway). The pool vectors are then
  assigned to their nearest centroid and stored sorted by list.
- Probing: :func:`default_nprobe` lists per query unless given; the
  pipeline instead tunes the probing on the job's own rows with
  :func:`tune_nprobe`: the cheapest of :func:`operating_points` whose
  recall@1 on one half of a seeded query sample reaches the target (plus a
  margin), with the recall reported on the other half. The cheap points
  scan, for each query, only the lists whose centroid is within ``delta``
  of its nearest one (at most 16): measured on a 2^16 x 512 pool of the
  benchmark's mixture, recall@1 0.98 with 1.6 lists scanned on average,
  where a fixed nprobe needs 3 lists for 0.99 and 2 give 0.96-0.97.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

# faiss warns below 39 training points per centroid; we never go below it.
MIN_POINTS_PER_CENTROID = 39
NPROBE_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
# border-aware probing: scan the lists within delta (cosine) of the nearest
# centroid, at most DELTA_CAP of them (neighbors_grouped._probe_lists)
DELTAS = (0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06, 0.08, 0.12, 0.16)
DELTA_CAP = 16
KMEANS_ITER = 10  # as faiss's benchmarks; at 100k rows 20 gave the same nprobe and recall


def default_nlist(n: int) -> int:
    """``round(sqrt(n) / 2)`` lists (at least 1; see the module doc)."""
    return max(1, int(round(0.5 * math.sqrt(max(n, 1)))))


def default_nprobe(nlist: int) -> int:
    """Lists scanned per query when not tuned: ``ceil(sqrt(nlist))``, at most ``nlist``."""
    return max(1, min(nlist, math.ceil(math.sqrt(nlist))))


def plan_nlist(n: int, expected_n: int | None, nlist_setting: int | None) -> int:
    """The nlist to build ``n`` vectors with (at least 39 training points per list)."""
    planned = nlist_setting or default_nlist(max(expected_n or 0, n))
    return max(1, min(planned, n // MIN_POINTS_PER_CENTROID))


def train_lists(
    x: np.ndarray, nlist: int, seed: int, train_points_per_centroid: int, gpu: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(centroids, list of each vector, order sorting vectors by list, n_train)."""
    n, dim = x.shape
    rng = np.random.default_rng(seed)
    n_train = min(n, train_points_per_centroid * nlist)
    sample = np.sort(rng.choice(n, size=n_train, replace=False))
    centroids = _kmeans(np.ascontiguousarray(x[sample]), nlist, seed, gpu)
    assign = np.empty(n, dtype=np.int64)
    step = 65_536
    for s in range(0, n, step):  # blocks: bounded (block x nlist) similarities
        assign[s : s + step] = (x[s : s + step] @ centroids.T).argmax(axis=1)
    order = np.argsort(assign, kind="stable")
    return centroids, assign, order, int(n_train)


def _kmeans(train: np.ndarray, nlist: int, seed: int, gpu: bool) -> np.ndarray:
    """Spherical k-means centroids (on the GPU when asked and possible)."""
    settings = dict(niter=KMEANS_ITER, seed=seed, spherical=True, verbose=False,
                    max_points_per_centroid=256, min_points_per_centroid=1)  # fmt: skip
    if gpu:
        try:
            kmeans = faiss.Kmeans(train.shape[1], nlist, gpu=True, **settings)
            kmeans.train(train)
            return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)
        except (AttributeError, RuntimeError):  # faiss-cpu, or no room on the GPU
            pass
    kmeans = faiss.Kmeans(train.shape[1], nlist, **settings)
    kmeans.train(train)
    return np.ascontiguousarray(kmeans.centroids, dtype=np.float32)


def recall_at_k(approx: np.ndarray, exact_pos: np.ndarray, exact_sc: np.ndarray,
                approx_sc: np.ndarray, k: int) -> float:  # fmt: skip
    """Mean |approx top-k ∩ exact top-k| / k; a hit that ties the exact
    k-th score (within 1e-6) counts, as another row equally near is no miss."""
    if not len(approx):
        return float("nan")
    hits = 0
    for a, e, asc, esc in zip(approx, exact_pos, approx_sc, exact_sc, strict=True):
        want = set(e[e >= 0].tolist())
        floor = np.nanmin(esc) if np.isfinite(esc).any() else np.inf
        hits += sum(1 for p, s in zip(a, asc, strict=True)
                    if p >= 0 and (p in want or s >= floor - 1e-6))  # fmt: skip
    return hits / (k * len(approx))


def scan_cost(nlist: int, mean_probes: float, n: int) -> float:
    """Vectors compared per query: the centroids plus the scanned lists."""
    return nlist + mean_probes * n / max(1, nlist)


def operating_points(nlist: int, deltas: bool = True) -> list[tuple[int, float]]:
    """(nprobe, delta) settings in increasing cost: border-aware probing
    (:data:`DELTAS`, at most :data:`DELTA_CAP` lists) first, then fixed
    nprobe steps up to every list."""
    cap = min(nlist, DELTA_CAP)
    points = [(cap, d) for d in DELTAS] if deltas else []
    start = cap if deltas else 0
    points += [(p, math.inf) for p in NPROBE_STEPS if start < p < nlist]
    return points + [(nlist, math.inf)]


def tune_nprobe(search, exact, q: np.ndarray, qrids: np.ndarray, points: list,
                target: float, margin: float = 0.02) -> tuple[tuple, dict]:  # fmt: skip
    """The cheapest of ``points`` ((nprobe, delta) settings) with recall@1 >=
    target + margin on the first half of the queries; the recall is then
    measured on the second half, and the setting raised further while that
    falls short of the target (never lowered: the check half only adds
    caution). ``search(q, qrids, point)`` and ``exact(q, qrids)`` return
    (positions, scores) of the top 1."""
    half = len(q) // 2
    tune, check = slice(0, half), slice(half, len(q))
    ex_pos, ex_sc = exact(q, qrids)
    at, tuned = len(points) - 1, float("nan")
    for i, point in enumerate(points):
        pos, sc = search(q[tune], qrids[tune], point)
        tuned = recall_at_k(pos, ex_pos[tune], ex_sc[tune], sc, 1)
        if tuned >= target + margin:
            at = i
            break
    while True:
        pos, sc = search(q[check], qrids[check], points[at])
        recall = recall_at_k(pos, ex_pos[check], ex_sc[check], sc, 1)
        if recall >= target or at == len(points) - 1:
            break
        at += 1
    return points[at], {
        "recall_at_1": recall,
        "recall_tune": tuned,
        "recall_queries": len(q) - half,
    }

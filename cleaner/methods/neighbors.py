"""Nearest-neighbour search over a reference pool.

SDD's memory bank (nearest clean pair by image and by text) and SPS's proxy
points (nearest reliable image) are both a top-1 inner-product search over
L2-normalised embeddings, with the query sample itself excluded:

    index = NeighborIndex(dim=512)
    for shard in shards:
        mask = scorer.reference_mask(shard)
        index.add(shard.image[mask], shard.row_ids[mask], shard.keys[mask])
    index.finalize()
    keys, scores, row_ids = index.search(queries, query_row_ids, k=1)

The pipeline bounds every pool first (:mod:`cleaner.methods.pools`: a
seeded sample of at most ``pool_size`` rows), so an index holds at most a
few hundred thousand vectors while the queries grow with the data.

Index kinds (chosen at :meth:`NeighborIndex.finalize`)
------------------------------------------------------
- ``flat``: exact search (faiss ``IndexFlatIP``) while the pool holds at
  most ``exact_threshold`` vectors.
- ``ivf``: inverted lists past the threshold (k-means cells, see
  :mod:`cleaner.methods.neighbors_ivf`), searched on the CPU by grouping
  the queries of a batch by list and comparing each list with its queries
  in one matrix product (:mod:`cleaner.methods.neighbors_grouped`). Its
  ``nprobe`` is tuned to a recall target on the job's own rows by the
  pipeline (:meth:`NeighborIndex.tune`), and the recall@1 against exact
  search is measured and recorded (:meth:`describe`).

Where the cells do not follow the data (many lists needed per query), the
pipeline may switch a pool to PQ fast-scan candidates re-ranked exactly
(:mod:`cleaner.methods.neighbors_pq`, :meth:`NeighborIndex.use_pq`).

When faiss sees a GPU (the ``gpu`` extra, ``faiss-gpu``), the k-means runs
there and the search goes to a faiss GPU copy of the index (``IndexFlatIP``
or an ``IndexIVFFlat`` with the same centroids); any failure there falls
back to the CPU. Either way the returned hits go through
:func:`cleaner.methods.neighbors_search.rescore`, so keys and scores do not
depend on how queries are batched.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

from cleaner.methods.neighbors_grouped import ListedVectors
from cleaner.methods.neighbors_ivf import (
    MIN_POINTS_PER_CENTROID,
    default_nlist,
    default_nprobe,
    operating_points,
    plan_nlist,
    recall_at_k,
    train_lists,
    tune_nprobe,
)
from cleaner.methods.neighbors_search import (
    as_query_row_ids,
    gpu_available,
    gpu_search_index,
    normalised,
    rescore,
    resolve,
    search_positions,
)
from cleaner.methods.threads import single_threaded_blas

__all__ = ["MIN_POINTS_PER_CENTROID", "NeighborIndex", "default_nlist", "default_nprobe"]


class NeighborIndex:
    """Top-k inner-product search with self-exclusion over a reference pool.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    exact_threshold : int, default=200_000
        Largest pool searched exactly; past it the index is an IVF.
    expected_n : int or None, default=None
        Final number of vectors when known in advance (sizes ``nlist``).
    nlist, nprobe : int or None, default=None
        IVF lists and lists scanned per query; ``None`` applies
        :func:`default_nlist` / :func:`default_nprobe`.
    train_points_per_centroid : int, default=64
        Size of the k-means training sample, per list.
    seed : int, default=0
        Seed of the training sample and of the k-means.
    use_gpu : bool or None, default=None
        ``None`` uses a GPU when faiss sees one; ``False`` never does.
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_threshold: int = 200_000,
        expected_n: int | None = None,
        nlist: int | None = None,
        nprobe: int | None = None,
        train_points_per_centroid: int = 64,
        seed: int = 0,
        use_gpu: bool | None = None,
    ) -> None:
        self.dim = int(dim)
        self.exact_threshold = int(exact_threshold)
        self.expected_n = None if expected_n is None else int(expected_n)
        self._nlist_setting = nlist
        self._nprobe_setting = nprobe
        self.train_points_per_centroid = int(train_points_per_centroid)
        self.seed = int(seed)
        self.use_gpu = use_gpu
        self.kind = "flat"
        self.nlist: int | None = None
        self.nprobe: int | None = None
        self.probe_delta = math.inf  # scan only lists this close to the nearest (tuned)
        self.n_train: int | None = None
        self.recall: dict = {}
        self._finalized = False
        self._chunks: list[np.ndarray] = []
        self._key_chunks: list[np.ndarray] = []
        self._rid_chunks: list[np.ndarray] = []
        self._payload_chunks: list[np.ndarray] | None = None
        self._n = 0
        self.vectors = np.empty((0, self.dim), dtype=np.float32)
        self.keys = np.empty(0, dtype=object)
        self.row_ids = np.empty(0, dtype=np.int64)
        self.payload: np.ndarray | None = None
        self._lists: ListedVectors | None = None
        self._rid_order: np.ndarray | None = None
        self._faiss = None  # exact CPU index (flat kind), built at finalize
        self._pq, self._pq_point = None, None  # PQ fast-scan candidates, when chosen
        self._gpu = None  # (gpu index, resources) when searching on a GPU

    # ------------------------------------------------------------------ build

    @property
    def ntotal(self) -> int:
        return int(self._n)

    def __len__(self) -> int:
        return self.ntotal

    def add(self, vectors, row_ids, keys, payload=None) -> None:
        """Add one chunk: (n, dim) vectors (normalised here), (n,) int64
        job-wide row ids (to exclude a query's own row), (n,) keys returned
        by :meth:`search`, and optionally (n,) float payload values read
        back with :meth:`payload_for` (with every chunk or with none)."""
        if self._finalized:
            raise RuntimeError("NeighborIndex.add() after finalize()")
        x = normalised(vectors, self.dim)
        n = len(x)
        rids = np.asarray(row_ids, dtype=np.int64).reshape(-1)
        k = np.asarray(keys, dtype=object).reshape(-1)
        if len(rids) != n or len(k) != n:
            raise ValueError(f"{n} vectors but {len(rids)} row ids and {len(k)} keys")
        if self._payload_chunks is None and not self._key_chunks:
            self._payload_chunks = [] if payload is not None else None
        if (payload is None) != (self._payload_chunks is None):
            raise ValueError("payload must be given with every chunk or with none")
        if payload is not None:
            p = np.asarray(payload, dtype=np.float32).reshape(-1)
            if len(p) != n:
                raise ValueError(f"{n} vectors but {len(p)} payload values")
            self._payload_chunks.append(p)
        self._chunks.append(x)
        self._key_chunks.append(k)
        self._rid_chunks.append(rids)
        self._n += n

    @classmethod
    def build(cls, dim: int, vectors: np.ndarray, row_ids, keys, payload=None, **settings):
        """A finalized index over one block of rows. Takes ``vectors`` over
        ((n, dim) float32, normalised in place): no copy of a large pool."""
        index = cls(dim, **settings)
        x = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, index.dim)
        if len(x):
            faiss.normalize_L2(x)
        index._chunks = [x]
        index._key_chunks = [np.asarray(keys, dtype=object).reshape(-1)]
        index._rid_chunks = [np.asarray(row_ids, dtype=np.int64).reshape(-1)]
        if payload is not None:
            index._payload_chunks = [np.asarray(payload, dtype=np.float32).reshape(-1)]
        index._n = len(x)
        return index.finalize()

    def finalize(self) -> NeighborIndex:
        """Finish building (exact or IVF by size). No :meth:`add` after it;
        :meth:`search` calls it if needed."""
        if self._finalized:
            return self
        x = (
            (self._chunks[0] if len(self._chunks) == 1 else np.concatenate(self._chunks))
            if self._chunks
            else self.vectors
        )
        keys = np.concatenate(self._key_chunks) if self._key_chunks else self.keys
        rids = np.concatenate(self._rid_chunks) if self._rid_chunks else self.row_ids
        payload = None
        if self._payload_chunks is not None:
            payload = np.concatenate(self._payload_chunks).astype(np.float32)
        self._chunks, self._key_chunks, self._rid_chunks, self._payload_chunks = [], [], [], None
        if len(x) > self.exact_threshold:
            nlist = plan_nlist(len(x), self.expected_n, self._nlist_setting)
            centroids, assign, order, self.n_train = train_lists(
                x, nlist, self.seed, self.train_points_per_centroid, gpu=self._want_gpu()
            )
            x, keys, rids = x[order], keys[order], rids[order]
            payload = None if payload is None else payload[order]
            bounds = np.searchsorted(assign[order], np.arange(nlist + 1))
            self._lists = ListedVectors(x, bounds, centroids)
            self.kind, self.nlist = "ivf", int(nlist)
            self.nprobe = int(min(nlist, self._nprobe_setting or default_nprobe(nlist)))
        self.vectors, self.keys, self.row_ids, self.payload = x, keys, rids, payload
        self._rid_order = np.argsort(self.row_ids, kind="stable")
        self._finalized = True
        self._prepare_search()
        return self

    def _want_gpu(self) -> bool:
        return self.use_gpu is not False and gpu_available()

    def _prepare_search(self) -> None:
        if self.kind == "flat" and self.ntotal:
            self._faiss = faiss.IndexFlatIP(self.dim)
            self._faiss.add(self.vectors)
        self._gpu = gpu_search_index(self) if self._want_gpu() and self.ntotal else None

    # -- pickling (Ray ships a finalized index to transform tasks) ----------

    def __getstate__(self) -> dict:
        if not self._finalized:
            raise RuntimeError("only a finalized NeighborIndex can be pickled")
        state = self.__dict__.copy()
        state["_faiss"] = None  # faiss objects are SWIG pointers: rebuilt on arrival
        state["_gpu"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._prepare_search()

    # ----------------------------------------------------------------- search

    def _self_positions(self, qrids: np.ndarray) -> np.ndarray:
        """Position of each query's own row in the index, -1 when absent."""
        if not self.ntotal:
            return np.full(len(qrids), -1, dtype=np.int64)
        sorted_rids = self.row_ids[self._rid_order]
        at = np.clip(np.searchsorted(sorted_rids, qrids), 0, len(sorted_rids) - 1)
        return np.where(sorted_rids[at] == qrids, self._rid_order[at], -1)

    def candidates(self, q: np.ndarray, qrids: np.ndarray, kk: int, point: tuple | None = None):
        """(positions, approximate scores) of each query's ``kk`` best non-self
        hits; ``point`` = (nprobe, delta) instead of the index's own."""
        nprobe, delta = point or (self.nprobe, self.probe_delta)
        if self._pq is not None and point is None:
            return self._pq.search(self.vectors, q, self._self_positions(qrids), kk, self._pq_point)
        if self._gpu is not None:
            try:  # faiss's GPU IVF scans a fixed nprobe
                return self._gpu(q, qrids, kk, nprobe)
            except RuntimeError:  # out of GPU memory and the like: the CPU does it
                self._gpu = None
        if self.kind == "flat":
            pos, sc = search_positions(self._faiss, self.row_ids, q, qrids, kk)
            return pos, np.where(pos >= 0, sc, -np.inf).astype(np.float32)
        return self._lists.search(q, self._self_positions(qrids), nprobe, kk, delta)

    def search(self, queries, query_row_ids, k: int = 1, exact_scores: bool = True):
        """The k nearest indexed rows of each query, its own row excluded.

        ``queries``: (m, dim), normalised here; ``query_row_ids``: (m,) row id
        of each query (``None`` disables the exclusion). Returns (m, k) keys
        (None where missing), float32 cosines (NaN where missing) and int64
        row ids (-1 where missing). ``exact_scores=False`` skips recomputing
        the scores of unambiguous hits (faster when only keys are used).
        """
        pos, sc, _ = self.positions(queries, query_row_ids, k, exact_scores)
        return resolve(pos, sc, self.keys, self.row_ids)

    def positions(self, queries, query_row_ids, k=1, exact_scores=True, owned=False):
        """:meth:`search` as (positions in the index (-1 = none), scores,
        the normalised queries); ``owned``: the queries may be normalised in place."""
        self.finalize()
        q = normalised(queries, self.dim, copy=not owned)
        qrids = as_query_row_ids(query_row_ids, len(q))
        if len(qrids) != len(q):
            raise ValueError(f"{len(q)} queries but {len(qrids)} query row ids")
        if not self.ntotal or not len(q):
            pos, sc = np.full((len(q), k), -1, np.int64), np.full((len(q), k), np.nan, np.float32)
        else:
            pos, sc = self.candidates(q, qrids, k + 1)
            pos, sc = rescore(self.vectors, q, pos, sc, k, scores=exact_scores)
        return pos, sc, q

    def payload_for(self, row_ids: np.ndarray) -> np.ndarray:
        """Payload values of indexed rows by row id (NaN for -1 or unknown)."""
        self.finalize()
        if self.payload is None:
            raise ValueError("this index was built without a payload")
        rids = np.asarray(row_ids, dtype=np.int64)
        out = np.full(rids.shape, np.nan, dtype=np.float32)
        if self.ntotal == 0:
            return out
        sorted_rids = self.row_ids[self._rid_order]
        at = np.clip(np.searchsorted(sorted_rids, rids), 0, len(sorted_rids) - 1)
        hit = sorted_rids[at] == rids
        out[hit] = self.payload[self._rid_order[at[hit]]]
        return out

    # ------------------------------------------------------------ diagnostics

    def _top1(self, q, qrids, point):
        return rescore(self.vectors, q, *self.candidates(q, qrids, 2, point), 1)

    def measure_recall(self, sample_queries, k: int = 1, query_row_ids=None) -> float:
        """Recall@k against exact search (this index scanning every list) on
        a sample of queries, their own rows excluded; 1.0 for the flat kind.
        Stored as ``recall_at_{k}`` in :meth:`describe`."""
        self.finalize()
        if self.kind == "flat" or self.ntotal == 0:
            recall = 1.0
        else:
            q = normalised(sample_queries, self.dim)
            qrids = as_query_row_ids(query_row_ids, len(q))
            approx = rescore(self.vectors, q, *self.candidates(q, qrids, k + 1), k)
            exact = rescore(
                self.vectors, q, *self.candidates(q, qrids, k + 1, (self.nlist, math.inf)), k
            )
            recall = recall_at_k(approx[0], exact[0], exact[1], approx[1], k)
        self.recall[f"recall_at_{k}"] = recall
        return recall

    def tune(self, queries, query_row_ids, target: float = 0.95) -> int:
        """Set the probing (nprobe, delta) to the cheapest that reaches
        ``target`` recall@1 on half of these queries and record the recall
        on the other half (IVF only)."""
        self.finalize()
        if self.kind == "flat" or self.ntotal == 0 or not len(queries):
            return self.nprobe or 0
        q = normalised(queries, self.dim)
        qrids = as_query_row_ids(query_row_ids, len(q))
        exact = (self.nlist, math.inf)
        points = operating_points(self.nlist, deltas=self._gpu is None)
        point, self.recall = tune_nprobe(
            self._top1, lambda a, b: self._top1(a, b, exact), q, qrids, points, target
        )
        self.set_nprobe(*point)
        with single_threaded_blas():
            probes = self._lists.mean_probes(q[len(q) // 2 :], *point)
        self.recall["mean_probes"] = round(probes, 3)
        return self.nprobe

    def use_pq(self, pq, point: tuple, recall: dict) -> None:
        """Search with PQ fast-scan candidates (:mod:`cleaner.methods.neighbors_pq`)."""
        self._pq, self._pq_point, self.recall = pq, tuple(point), recall
        self.nprobe, self.probe_delta = int(point[0]), math.inf

    def set_nprobe(self, nprobe: int, delta: float = math.inf) -> None:
        """Scan ``nprobe`` lists per query, or only those of them within
        ``delta`` of the nearest centroid (IVF only)."""
        if self.kind == "ivf":
            self.nprobe = int(min(max(1, nprobe), self.nlist))
            self.probe_delta = float(delta)

    def _search_kind(self) -> str:
        if self._gpu is not None:
            return "gpu"
        if self.kind == "flat":
            return "exact"
        return "pq fast-scan, re-ranked" if self._pq is not None else "grouped"

    def describe(self) -> dict:
        """JSON-able summary: kind, size, IVF settings and measured recall."""
        return {
            "kind": self.kind,
            "ntotal": self.ntotal,
            "dim": self.dim,
            "exact_threshold": self.exact_threshold,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "probe_delta": self.probe_delta if math.isfinite(self.probe_delta) else None,
            "n_train": self.n_train,
            "recall_at_1": self.recall.get("recall_at_1", 1.0 if self.kind == "flat" else None),
            **{key: v for key, v in self.recall.items() if key != "recall_at_1"},
            "gpu": self._gpu is not None,
            "codec": self._pq.key if self._pq is not None else None,
            "k_factor": self._pq_point[1] if self._pq is not None else None,
            "search": self._search_kind(),
            "has_payload": self.payload is not None or self._payload_chunks is not None,
        }

"""Nearest-neighbour search over a reference set, streamed in shard by shard.

SDD's memory bank (nearest clean pair by image and by text) and SPS's proxy
points (nearest reliable image) are both a top-1 inner-product search over
L2-normalised embeddings, with the query sample itself excluded. The
reference set is built by streaming shards into a :class:`NeighborIndex`:

    index = NeighborIndex(dim=512)
    for shard in shards:
        mask = scorer.reference_mask(shard)
        index.add(shard.image[mask], shard.row_ids[mask], shard.keys[mask])
    index.finalize()
    keys, scores, row_ids = index.search(queries, query_row_ids, k=1)

Index kinds
-----------
- ``flat``: exact ``IndexFlatIP`` while the index holds at most
  ``exact_threshold`` vectors.
- ``ivf``: ``IndexIVFFlat`` (inner-product metric) past the threshold.
  Vectors are staged in the flat index until the threshold is crossed and
  there are enough of them to train the coarse quantiser; the staged
  vectors are then moved into the IVF index and every later chunk goes
  straight there. Memory therefore stays that of the index itself (plus a
  transient copy of the staged part at the switch); Python only keeps the
  key, row-id and payload arrays.

How ``nlist``, the training sample and ``nprobe`` are chosen is described
in :mod:`cleaner.methods.neighbors_ivf`, which builds the IVF index and
checks its recall; the self-excluding search itself is in
:mod:`cleaner.methods.neighbors_search`. This module keeps the index's
incremental build state and its public face.

A GPU copy of the finished index is used for search when faiss sees a GPU
(``faiss.get_num_gpus() > 0``); any failure there falls back to the CPU.
"""

from __future__ import annotations

import faiss
import numpy as np

from cleaner.methods.neighbors_ivf import (
    MIN_POINTS_PER_CENTROID,
    build_ivf,
    default_nlist,
    default_nprobe,
    recall_against_exact,
    switch_nlist,
)
from cleaner.methods.neighbors_search import (
    as_query_row_ids,
    normalised,
    resolve,
    search_positions,
    to_gpu_if_available,
)

__all__ = ["MIN_POINTS_PER_CENTROID", "NeighborIndex", "default_nlist", "default_nprobe"]


class NeighborIndex:
    """Top-k inner-product search with self-exclusion, built incrementally.

    Parameters
    ----------
    dim : int
        Embedding dimension.
    exact_threshold : int, default=200_000
        Largest number of vectors searched exactly (``IndexFlatIP``); past
        it the index becomes an ``IndexIVFFlat``.
    expected_n : int or None, default=None
        Final number of vectors, when known in advance. Only used to size
        ``nlist`` (and hence how many vectors to stage before training).
    nlist : int or None, default=None
        Number of IVF lists; ``None`` applies ``4 * sqrt(N)`` (see module doc).
    nprobe : int or None, default=None
        Lists scanned per query; ``None`` applies :func:`default_nprobe`.
    train_points_per_centroid : int, default=64
        Size of the k-means training sample, per list.
    seed : int, default=0
        Seed of the training sample and of faiss's k-means.
    use_gpu : bool or None, default=None
        ``None`` uses a GPU when faiss sees one; ``False`` never does.

    Attributes
    ----------
    kind : str
        ``'flat'`` or ``'ivf'``.
    ntotal : int
        Number of vectors added.
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
        self.n_train: int | None = None
        self.recall: dict[str, float] = {}
        self._index = faiss.IndexFlatIP(self.dim)
        self._quantizer: faiss.Index | None = None
        self._search_index: faiss.Index | None = None
        self._gpu_resources = None
        self._finalized = False

        # Per-row metadata arrive in chunks and are joined at finalize().
        self._key_chunks: list[np.ndarray] = []
        self._rid_chunks: list[np.ndarray] = []
        self._payload_chunks: list[np.ndarray] | None = None
        self.keys = np.empty(0, dtype=object)
        self.row_ids = np.empty(0, dtype=np.int64)
        self.payload: np.ndarray | None = None
        self._rid_order: np.ndarray | None = None

    # ------------------------------------------------------------------ build

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def add(
        self,
        vectors: np.ndarray,
        row_ids: np.ndarray,
        keys: np.ndarray,
        payload: np.ndarray | None = None,
    ) -> None:
        """Add one chunk of reference vectors.

        Parameters
        ----------
        vectors : np.ndarray
            (n, dim) embeddings; normalised again here.
        row_ids : np.ndarray
            (n,) int64 job-wide row ids, used to exclude a query's own row.
        keys : np.ndarray
            (n,) sample keys (strings) returned by :meth:`search`.
        payload : np.ndarray or None, default=None
            (n,) float values carried per row (e.g. SPS's predicted match
            probability of a reliable pair), read back with
            :meth:`payload_for`. Give it with every chunk or with none.
        """
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
        self._key_chunks.append(k)
        self._rid_chunks.append(rids)
        if n:
            self._index.add(x)
            self._maybe_switch_to_ivf(force=False)

    def _maybe_switch_to_ivf(self, force: bool) -> None:
        """Turn the staged flat index into an IVF index once it is worth it."""
        n = self.ntotal
        if self.kind != "flat" or n <= self.exact_threshold:
            return
        nlist = switch_nlist(n, self.expected_n, self._nlist_setting, force)
        if nlist is not None:
            self._build_ivf(nlist)

    def _build_ivf(self, nlist: int) -> None:
        ivf, quantizer, n_train = build_ivf(
            self._index, self.dim, nlist, self.seed, self.train_points_per_centroid
        )
        self._quantizer = quantizer  # the IVF index does not own it
        self._index = ivf
        self.kind = "ivf"
        self.nlist = int(nlist)
        self.n_train = n_train
        self.nprobe = int(min(nlist, self._nprobe_setting or default_nprobe(nlist)))
        ivf.nprobe = self.nprobe

    def finalize(self) -> NeighborIndex:
        """Finish building: switch to IVF if past the threshold, join metadata.

        Called by :meth:`search` if not called before. No :meth:`add` after it.
        """
        if self._finalized:
            return self
        self._maybe_switch_to_ivf(force=True)
        self.keys = (
            np.concatenate(self._key_chunks) if self._key_chunks else np.empty(0, dtype=object)
        )
        self.row_ids = (
            np.concatenate(self._rid_chunks) if self._rid_chunks else np.empty(0, dtype=np.int64)
        )
        if self._payload_chunks is not None:
            self.payload = (
                np.concatenate(self._payload_chunks)
                if self._payload_chunks
                else np.empty(0, dtype=np.float32)
            )
        self._key_chunks, self._rid_chunks, self._payload_chunks = [], [], None
        self._rid_order = np.argsort(self.row_ids, kind="stable")
        self._search_index = self._to_gpu_if_available(self._index)
        self._finalized = True
        return self

    # -- pickling (Ray ships a finalized index to transform tasks) ----------

    def __getstate__(self) -> dict:
        if not self._finalized:
            raise RuntimeError("only a finalized NeighborIndex can be pickled")
        state = self.__dict__.copy()
        # faiss objects are SWIG pointers: ship the CPU index as bytes; the
        # IVF index carries its own copy of the quantizer when serialised.
        state["_index"] = faiss.serialize_index(self._index)
        state["_quantizer"] = None
        state["_search_index"] = None
        state["_gpu_resources"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._index = faiss.deserialize_index(state["_index"])
        if self.kind == "ivf":
            faiss.extract_index_ivf(self._index).nprobe = self.nprobe
        self._search_index = self._to_gpu_if_available(self._index)

    def _to_gpu_if_available(self, index: faiss.Index) -> faiss.Index:
        nprobe = self.nprobe if self.kind == "ivf" else None
        search_index, self._gpu_resources = to_gpu_if_available(index, self.use_gpu, nprobe)
        return search_index

    # ----------------------------------------------------------------- search

    def search(
        self,
        queries: np.ndarray,
        query_row_ids: np.ndarray | None,
        k: int = 1,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k nearest indexed rows of each query, its own row excluded.

        Parameters
        ----------
        queries : np.ndarray
            (m, dim) query embeddings; normalised here.
        query_row_ids : np.ndarray or None
            (m,) row id of each query; an indexed row with the same id is
            never returned for it. ``None`` disables the exclusion.
        k : int, default=1
            Number of neighbours per query.

        Returns
        -------
        keys : np.ndarray
            (m, k) object array of neighbour keys, ``None`` where fewer than
            k neighbours exist.
        scores : np.ndarray
            (m, k) float32 cosine similarities, NaN where missing.
        row_ids : np.ndarray
            (m, k) int64 neighbour row ids, -1 where missing.
        """
        self.finalize()
        q = normalised(queries, self.dim)
        qrids = as_query_row_ids(query_row_ids, len(q))
        if len(qrids) != len(q):
            raise ValueError(f"{len(q)} queries but {len(qrids)} query row ids")
        pos, scores = search_positions(self._search_index, self.row_ids, q, qrids, k)
        return resolve(pos, scores, self.keys, self.row_ids)

    def payload_for(self, row_ids: np.ndarray) -> np.ndarray:
        """Payload values of indexed rows, by row id (NaN for -1 or unknown).

        Parameters
        ----------
        row_ids : np.ndarray
            Row ids as returned by :meth:`search` (any shape).

        Returns
        -------
        payload : np.ndarray
            float32 array of the same shape.
        """
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

    def measure_recall(
        self,
        sample_queries: np.ndarray,
        k: int = 1,
        query_row_ids: np.ndarray | None = None,
    ) -> float:
        """Recall@k of the approximate search against brute force, on a sample.

        Brute force is the same IVF index scanning all of its lists
        (``nprobe = nlist``), which for ``IndexIVFFlat`` is an exact search;
        it runs on the CPU copy.

        Parameters
        ----------
        sample_queries : np.ndarray
            (m, dim) query embeddings, e.g. a seeded sample of the rows that
            will be searched.
        k : int, default=1
            Neighbours compared per query.
        query_row_ids : np.ndarray or None, default=None
            Row ids of the queries, to exclude self-hits in both searches
            (without it, queries drawn from the index find themselves and
            the recall is inflated).

        Returns
        -------
        recall : float
            Mean over queries of |approx top-k ∩ exact top-k| / k; 1.0 for
            the exact flat index. Also stored as ``recall_at_{k}`` in
            :meth:`describe`.
        """
        self.finalize()
        if self.kind == "flat" or self.ntotal == 0:
            recall = 1.0
        else:
            q = normalised(sample_queries, self.dim)
            qrids = as_query_row_ids(query_row_ids, len(q))
            recall = recall_against_exact(
                self._search_index, self._index, self.row_ids, q, qrids, k
            )
        self.recall[f"recall_at_{k}"] = recall
        return recall

    def set_nprobe(self, nprobe: int) -> None:
        """Change the number of lists scanned (IVF only), e.g. after tuning."""
        if self.kind != "ivf":
            return
        self.nprobe = int(min(max(1, nprobe), self.nlist))
        self._index.nprobe = self.nprobe
        if self._search_index is not None and self._search_index is not self._index:
            self._search_index.nprobe = self.nprobe

    def describe(self) -> dict:
        """JSON-able summary: kind, size, IVF settings and measured recall."""
        return {
            "kind": self.kind,
            "ntotal": self.ntotal,
            "dim": self.dim,
            "exact_threshold": self.exact_threshold,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "n_train": self.n_train,
            "recall_at_1": self.recall.get("recall_at_1", 1.0 if self.kind == "flat" else None),
            **{key: v for key, v in self.recall.items() if key != "recall_at_1"},
            "gpu": self._search_index is not None and self._search_index is not self._index,
            "has_payload": self.payload is not None or self._payload_chunks is not None,
        }

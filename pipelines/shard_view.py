"""One cache partition as the methods see it: its rows' status and the
``ok`` rows as :class:`~cleaner.methods.base.Pairs`.

Every stage (fit, index, transform) reads shards through this view, so row
ids, keys and label checks are made the same way in each pass.

Reading is cheap and overlapped:

- vectors come from the cache memory-mapped in float16
  (:meth:`EmbeddingCache.open_vectors`) and are converted to normalised
  float32 in blocks, with the arithmetic of :meth:`EmbeddingCache.load`
  (so the values are the same); the scorable rows are the cache's
  :meth:`~EmbeddingCache.ok_mask`, which it computes once per partition.
  A partition with rows whose vectors are bad (NaN, zero) goes through
  :meth:`EmbeddingCache.load`, which writes their status and error.
- :func:`iter_views` reads the next shard(s) on background threads while
  the caller works on the current one (numpy and pyarrow release the GIL).
- :class:`RowMemo` keeps per-shard values the methods memoise in
  ``Pairs.extra`` (the base hash of each key, SPS's in-batch losses) from
  one pass to the next, for up to ``MEMO_ROWS`` rows of the job.
"""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleaner.errors import InputError
from cleaner.io.embcache import EmbeddingCache, normalise_rows
from cleaner.methods.base import Pairs
from cleaner.methods.sampling import base_hash

ROW_ID_SHIFT = 32  # row id = shard position << 32 | index within shard
CONVERT_ROWS = 16_384  # rows converted float16 -> float32 at a time
MEMO_ROWS = 1 << 22  # rows whose memoised values are kept between passes
PREFETCH = True  # read the next shard on a thread (profiling turns it off)


class RowMemo:
    """Per-shard ``Pairs.extra`` dicts kept across a job's passes, up to a
    row budget (beyond it a shard gets a fresh dict each pass)."""

    def __init__(self, budget_rows: int = MEMO_ROWS) -> None:
        self.budget = int(budget_rows)
        self.used = 0
        self._extra: dict[str, dict] = {}
        self._lock = threading.Lock()  # the read-ahead threads ask concurrently

    def extra_for(self, stem: str, n_rows: int) -> dict:
        with self._lock:
            hit = self._extra.get(stem)
            if hit is not None:
                return hit
            if self.used + n_rows > self.budget:
                return {}
            self.used += n_rows
            self._extra[stem] = {}
            return self._extra[stem]


def _normalised_f32(arr: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    """float32, L2-normalised copy of ``arr[rows]`` (all rows when None),
    converted block by block from the memory map."""
    n = arr.shape[0] if rows is None else len(rows)
    out = np.empty((n, arr.shape[1]), dtype=np.float32)
    for s in range(0, n, CONVERT_ROWS):
        e = min(n, s + CONVERT_ROWS)
        block = out[s:e]
        block[...] = arr[s:e] if rows is None else arr[rows[s:e]]  # converts in place
        normalise_rows(block)
    return out


def _is_ok(meta: pa.Table) -> np.ndarray:
    return pc.fill_null(pc.equal(meta.column("status"), "ok"), False).to_numpy()


def _read(cache: EmbeddingCache, stem: str):
    """(meta, image, text, have): meta and normalised float32 vectors as
    :meth:`EmbeddingCache.load` gives them, but only for the rows where
    ``have`` is True (the scorable ones; others are never read)."""
    ok = cache.ok_mask(stem)
    meta = cache.read_meta(stem)
    status_ok = _is_ok(meta)
    img, txt = cache.open_vectors(stem)
    if (status_ok & ~ok).any() or img.shape[1:] != txt.shape[1:]:
        shard = cache.load(stem)  # bad vectors become status rows there (or it raises)
        return shard.meta, shard.image, shard.text, np.ones(len(shard.meta), dtype=bool)
    rows = None if ok.all() else np.flatnonzero(ok)
    return meta, _normalised_f32(img, rows), _normalised_f32(txt, rows), ok


@dataclass
class ShardView:
    meta: pa.Table
    ok: np.ndarray
    pairs: Pairs
    position: int = 0
    ok_positions: np.ndarray | None = None  # row positions (in the partition) of the ok rows

    @classmethod
    def load(
        cls,
        cache: EmbeddingCache,
        stem: str,
        position: int,
        n_classes: int | None = None,
        extra: dict | None = None,
    ) -> ShardView:
        """``n_classes`` set: labels are needed; rows without a valid one
        become ``bad_label`` status rows (embeddings input can carry any).
        ``extra``: the dict the pairs memoise values in (see :class:`RowMemo`)."""
        meta, image, text, have = _read(cache, stem)
        labels = None
        if n_classes is not None:
            meta, labels = check_labels(meta, n_classes, stem)
        ok = _is_ok(meta)
        keys = np.asarray(meta.column("key").to_pylist(), dtype=object)
        index = meta.column("index").to_numpy()
        row_ids = (np.int64(position) << ROW_ID_SHIFT) | index.astype(np.int64)
        extra = {} if extra is None else extra
        sel = ok[have]  # the read rows that are (still) ok
        pairs = Pairs(
            image=image if sel.all() else image[sel],
            text=text if sel.all() else text[sel],
            keys=keys[ok],
            row_ids=row_ids[ok],
            labels=None if labels is None else labels[ok],
            extra=extra,
        )
        hashed = extra.get("key_hash")
        if hashed is None or len(hashed) != len(pairs):
            extra["key_hash"] = base_hash(meta.column("key"))[ok]
        return cls(meta, ok, pairs, position, np.flatnonzero(ok))


def gather_vectors(cache: EmbeddingCache, stems, shard_pos, row_pos, which: str) -> np.ndarray:
    """Normalised float32 ``image`` or ``text`` vectors of the rows
    (shard position, row position in its partition), read from the memory
    maps one shard at a time, in the order given."""
    from cleaner.methods.threads import parallel_map

    shard_pos, row_pos = np.asarray(shard_pos, np.int64), np.asarray(row_pos, np.int64)
    shards = np.unique(shard_pos)
    if not len(shards):
        return np.empty((0, 0), dtype=np.float32)
    first = cache.open_vectors(stems[int(shards[0])])[0]
    out = np.empty((len(row_pos), first.shape[1]), dtype=np.float32)

    def read(s) -> None:  # shards fill disjoint rows; numpy copies without the GIL
        at = np.flatnonzero(shard_pos == s)
        order = np.argsort(row_pos[at], kind="stable")  # forward reads of the map
        img, txt = cache.open_vectors(stems[int(s)])
        out[at[order]] = _normalised_f32(img if which == "image" else txt, row_pos[at[order]])

    parallel_map(read, shards)
    return out


def iter_views(cache: EmbeddingCache, items, n_classes=None, memo=None, ahead: int = 1):
    """(stem, ShardView) for each (position, stem) of ``items``, in order,
    reading up to ``ahead`` next shards on background threads while the
    caller uses the current one (memory: ``ahead`` + 1 shards)."""
    items = list(items)

    def load(item):
        pos, stem = item
        extra = None if memo is None else memo.extra_for(stem, cache.num_rows(stem))
        return stem, ShardView.load(cache, stem, pos, n_classes, extra)

    if len(items) <= 1 or not PREFETCH or ahead < 1:
        yield from map(load, items)
        return
    pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="nclean-read")
    try:
        pending = deque(pool.submit(load, item) for item in items[:ahead])
        for nxt in items[ahead:]:
            current = pending.popleft().result()
            pending.append(pool.submit(load, nxt))
            yield current
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def check_labels(meta: pa.Table, n_classes: int, stem: str) -> tuple[pa.Table, np.ndarray]:
    """Labels as int64 (-1 when missing); ok rows whose label is missing or
    out of range become ``bad_label`` rows with the reason in ``error``."""
    if "label" not in meta.column_names:
        raise InputError(
            f"partition {stem} has no label column: CLIPCleaner needs labelled data "
            "(shards with a cls member or --label-key json:<field>)"
        )
    raw = meta.column("label").to_pylist()
    labels = np.array([-1 if v is None else int(v) for v in raw], dtype=np.int64)
    status = np.asarray(meta.column("status").to_pylist(), dtype=object)
    bad = (status == "ok") & ((labels < 0) | (labels >= n_classes))
    if not bad.any():
        return meta, labels
    error = np.asarray(meta.column("error").to_pylist(), dtype=object)
    status = status.copy()
    status[bad] = "bad_label"
    for i in np.flatnonzero(bad):
        error[i] = (
            "label missing" if labels[i] < 0 else f"label {labels[i]} out of range [0, {n_classes})"
        )
    meta = meta.set_column(
        meta.schema.get_field_index("status"), "status", pa.array(status.tolist(), pa.string())
    )
    meta = meta.set_column(
        meta.schema.get_field_index("error"), "error", pa.array(error.tolist(), pa.string())
    )
    return meta, labels

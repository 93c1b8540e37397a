"""Bounded reference pools: a seeded uniform sample of at most ``pool_size`` rows.

SDD's clean set D_c and SPS's reliable set grow with the data (a quarter
and two thirds of all rows on the benchmark's mixture), while their use --
a nearest neighbour for every row -- costs queries x pool. So every pool is
a *bottom-k sample* of its qualifying rows: each row gets a priority, a
seeded hash of its sample key (:func:`cleaner.methods.sampling.row_hash`),
and the pool is the ``pool_size`` rows with the smallest priorities.

- Uniform: priorities are independent of whether a row qualifies, so every
  qualifying row is equally likely to be kept.
- Order-free and resumable: a priority depends on the key alone, so the
  pool is the same whatever order the shards list their rows in, and
  whether the job runs once, resumes or runs on Ray.
- Bounded memory in one streaming pass: a row is kept only below a
  threshold derived from the expected number of qualifying rows (the fit's
  ``pool_fraction x rows``, with a margin), and when the buffer exceeds
  ``PRUNE_FACTOR x pool_size`` it is cut back to the ``pool_size`` smallest
  and the threshold lowered to the largest kept priority. Only ids are
  buffered (shard position, row position, row id, key, payload); the
  vectors of the final members are read from the cache afterwards.

A pruned row can never return: it is not among the ``pool_size`` smallest
of the rows seen so far, hence not of all rows. The result is exactly the
bottom-k of the rows below the initial threshold; that is the bottom-k of
all qualifying rows unless the fit overestimated their number by more than
the margin, in which case the pool is a smaller (still seeded, uniform)
Bernoulli sample -- recorded as its sampling fraction either way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MARGIN = 1.25  # initial threshold: MARGIN x pool_size expected rows below it
PRUNE_FACTOR = 1.2


@dataclass
class PoolRows:
    """The members of a pool, in a canonical order (by priority, then key)."""

    shard_pos: np.ndarray  # int64 position of the row's shard in the job
    row_pos: np.ndarray  # int64 row position within the shard's partition
    row_ids: np.ndarray
    keys: np.ndarray
    payload: np.ndarray | None
    qualifying: int  # rows that qualified, all of them (not only the kept)

    def __len__(self) -> int:
        return len(self.row_ids)


class PoolSampler:
    """Streaming bottom-``pool_size`` sample of one pool's qualifying rows.

    Parameters
    ----------
    pool_size : int
        Most rows kept.
    expected : int
        Expected number of qualifying rows over the whole job.
    """

    def __init__(self, pool_size: int, expected: int) -> None:
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self.pool_size = int(pool_size)
        self.threshold = min(1.0, MARGIN * self.pool_size / max(1, int(expected)))
        self.initial_threshold = self.threshold
        self.qualifying = 0
        self._chunks: list[tuple] = []
        self._buffered = 0

    def offer(self, mask, priority, shard_pos: int, row_pos, row_ids, keys, payload=None) -> None:
        """Offer one shard's rows: ``mask`` says which qualify; the other
        arrays are aligned with it (``payload`` None or one value per row)."""
        mask = np.asarray(mask, dtype=bool)
        self.qualifying += int(mask.sum())
        keep = mask & (np.asarray(priority) <= self.threshold)
        if not keep.any():
            return
        sel = np.flatnonzero(keep)
        self._chunks.append(
            (
                np.asarray(priority, np.float64)[sel],
                np.full(len(sel), shard_pos, dtype=np.int64),
                np.asarray(row_pos, np.int64)[sel],
                np.asarray(row_ids, np.int64)[sel],
                np.asarray(keys, dtype=object)[sel],
                None if payload is None else np.asarray(payload, np.float32)[sel],
            )
        )
        self._buffered += len(sel)
        if self._buffered > PRUNE_FACTOR * self.pool_size:
            self._prune()

    def _joined(self) -> tuple:
        cols = list(zip(*self._chunks, strict=True)) if self._chunks else [()] * 6
        out = [np.concatenate(c) if c else None for c in cols[:5]]
        payload = None if not cols[5] or cols[5][0] is None else np.concatenate(cols[5])
        if out[0] is None:
            out = [np.empty(0, np.float64), *(np.empty(0, np.int64) for _ in range(3)),
                   np.empty(0, object)]  # fmt: skip
        return (*out, payload)

    def _prune(self) -> None:
        prio, spos, rpos, rids, keys, payload = self._joined()
        # canonical order: priority, then key, then row id (equal keys only)
        order = np.lexsort((rids, keys.astype(str), prio))[: self.pool_size]
        kept = tuple(
            None if a is None else a[order] for a in (prio, spos, rpos, rids, keys, payload)
        )
        self._chunks, self._buffered = [kept], len(order)
        if len(order) == self.pool_size:
            self.threshold = min(self.threshold, float(prio[order[-1]]))

    def result(self) -> PoolRows:
        """The members, in canonical order (priority, key)."""
        self._prune()
        _, spos, rpos, rids, keys, payload = self._joined()
        return PoolRows(spos, rpos, rids, keys, payload, self.qualifying)

    def describe(self, kept: int) -> dict:
        return {
            "qualifying": self.qualifying,
            "pool_size": self.pool_size,
            "sampled": kept < self.qualifying,
            "sampling_fraction": kept / self.qualifying if self.qualifying else 1.0,
        }

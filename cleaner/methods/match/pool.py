"""Seeded reference pools for ``match``, drawn from row ids, not positions.

Both corrections of the raw cosine compare a pair with a *reference pool* of
the data: CSLS with the k nearest pool texts of the image (and pool images of
the text), negCLIPLoss with K random batches of pool pairs. The pool, the fit
sample and the shuffled ("null") pairs are all chosen by ranking rows on a
seeded 64-bit hash of their row id, so they are the same whatever order or
shard cut the rows arrive in, and a pipeline can rebuild the pool by
streaming shards and keeping the rows whose hash is at most
``Pool.hash_max`` (:func:`pool_mask`).

Pool layout: rows sorted by hash; negCLIPLoss batch b is the b-th of
``n_batches`` near-equal contiguous slices of that order, so a batch is a
seeded random subset of the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

# Salts keep the three seeded draws independent of one another.
SALT_POOL, SALT_FIT, SALT_NULL = 0x706F6F6C, 0x666974, 0x6E756C6C
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser: a fast, well-mixed 64-bit hash."""
    with np.errstate(over="ignore"):
        z = (z + np.uint64(0x9E3779B97F4A7C15)) & _M64
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return z ^ (z >> np.uint64(31))


def row_hash(row_ids: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """uint64 hash of each row id under (seed, salt); equal ids hash equally."""
    key = _splitmix64(np.array([(int(seed) << 32) ^ int(salt)], dtype=np.uint64))[0]
    ids = np.asarray(row_ids, dtype=np.int64).astype(np.uint64)
    return _splitmix64(ids ^ key)


def smallest_hash(row_ids: np.ndarray, seed: int, salt: int, m: int) -> np.ndarray:
    """Positions of the (at most) ``m`` rows of smallest hash, in hash order."""
    h = row_hash(row_ids, seed, salt)
    if m < len(h):
        part = np.argpartition(h, m - 1)[:m]
        return part[np.argsort(h[part], kind="stable")]
    return np.argsort(h, kind="stable")


def pool_mask(row_ids: np.ndarray, seed: int, hash_max: int) -> np.ndarray:
    """Rows that belong to a pool drawn with ``seed``: hash <= ``hash_max``."""
    return row_hash(row_ids, seed, SALT_POOL) <= np.uint64(hash_max)


def check_unique(row_ids: np.ndarray) -> None:
    """Row ids name rows; a duplicate would make pool membership ambiguous."""
    if len(np.unique(row_ids)) != len(row_ids):
        raise ValueError("row_ids must be unique")


@dataclass
class Pool:
    """Reference pairs (unit float32 vectors) in hash order, with their row ids."""

    image: np.ndarray
    text: np.ndarray
    row_ids: np.ndarray
    n_batches: int
    hash_max: int

    @classmethod
    def draw(
        cls,
        image: np.ndarray,
        text: np.ndarray,
        row_ids: np.ndarray,
        size: int,
        seed: int,
        batch_size: int,
    ) -> Pool:
        """The ``size`` rows of smallest pool hash; batches of about ``batch_size``."""
        pick = smallest_hash(row_ids, seed, SALT_POOL, size)
        ids = np.asarray(row_ids, dtype=np.int64)[pick]
        hash_max = int(row_hash(ids[-1:], seed, SALT_POOL)[0])
        return cls(
            image=np.ascontiguousarray(image[pick], dtype=np.float32),
            text=np.ascontiguousarray(text[pick], dtype=np.float32),
            row_ids=ids,
            n_batches=max(1, len(pick) // max(1, int(batch_size))),
            hash_max=hash_max,
        )

    def __len__(self) -> int:
        return len(self.row_ids)

    @cached_property
    def batch_starts(self) -> np.ndarray:
        """First pool position of each negCLIPLoss batch (near-equal slices)."""
        return np.linspace(0, len(self), self.n_batches + 1).astype(np.int64)[:-1]

    @cached_property
    def batch_of(self) -> np.ndarray:
        """Batch number of every pool position."""
        starts = self.batch_starts
        return np.searchsorted(starts, np.arange(len(self)), side="right") - 1

    @cached_property
    def _id_order(self) -> np.ndarray:
        return np.argsort(self.row_ids, kind="stable")

    def index_of(self, row_ids: np.ndarray) -> np.ndarray:
        """Pool position of each row id, -1 for rows outside the pool."""
        order = self._id_order
        ids = np.asarray(row_ids, dtype=np.int64)
        pos = np.searchsorted(self.row_ids[order], ids)
        pos = np.minimum(pos, len(order) - 1)
        found = self.row_ids[order][pos] == ids
        return np.where(found, order[pos], -1).astype(np.int64)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"pool_image": self.image, "pool_text": self.text, "pool_row_ids": self.row_ids}

    @classmethod
    def from_arrays(cls, arrays: dict, n_batches: int, hash_max: int) -> Pool:
        return cls(
            image=np.ascontiguousarray(arrays["pool_image"], dtype=np.float32),
            text=np.ascontiguousarray(arrays["pool_text"], dtype=np.float32),
            row_ids=np.asarray(arrays["pool_row_ids"], dtype=np.int64),
            n_batches=int(n_batches),
            hash_max=int(hash_max),
        )

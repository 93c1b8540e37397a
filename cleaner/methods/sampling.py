"""Seeded row samples that do not depend on how the job is cut into passes,
nor on the order of the rows.

Two kinds of draw:

- :func:`sample_mask`: a seeded Bernoulli mask over a block's positions, with
  a generator seeded by the job's seed and a digest of a key naming the block
  (and the purpose). The same rows are drawn whether a job runs once or
  resumes, locally or on Ray -- but a block whose rows arrive in another
  order gets another draw.
- :func:`key_uniform` (and :func:`key_sample_mask`, :func:`key_order`): a
  seeded value per row computed from the row's *sample key* alone, so a
  sample reordered within its shard (img2dataset does that between two
  downloads) keeps its value. Fits, reference pools and SPS's loss batches
  use these, so that the same samples give the same verdicts in any order.

The key hash is computed once per key (FNV-1a over the key's UTF-8 bytes,
vectorised across keys one byte position at a time, then splitmix64's
mixer) and each purpose derives its own value by mixing that base hash with
a digest of (seed, purpose). Equal keys get equal values; that is the
point. The pipeline hashes a shard's key column once when it loads the
shard and hands the base hashes along in ``Pairs.extra`` (see
:func:`row_hash`), so no key is hashed twice in a pass.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def sample_mask(n: int, rate: float, seed: int, key: str) -> np.ndarray:
    """A seeded Bernoulli(rate) mask over ``n`` rows, reproducible per ``key``."""
    if rate >= 1.0:
        return np.ones(n, dtype=bool)
    digest = int.from_bytes(hashlib.sha256(f"fit-sample:{key}".encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    return rng.random(n) < rate


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, on uint64 arrays (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _salt(seed: int, purpose: str) -> np.uint64:
    digest = hashlib.sha256(f"{int(seed)}:{purpose}".encode()).digest()[:8]
    return np.uint64(int.from_bytes(digest, "little"))


def base_hash(keys) -> np.ndarray:
    """uint64 base hash of each key: a str sequence, a numpy object array or
    an Arrow string column (None / null counts as '')."""
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    if not isinstance(keys, pa.Array):
        keys = pa.array(np.asarray(keys, dtype=object).reshape(-1).tolist(), pa.large_string())
    arr = pc.fill_null(keys.cast(pa.large_string()), "")
    n = len(arr)
    if n == 0:
        return np.empty(0, dtype=np.uint64)
    _, offs_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(offs_buf, dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = (
        np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(1, np.uint8)
    )
    starts, lengths = offsets[:-1], np.diff(offsets)
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for t in range(int(lengths.max(initial=0))):
            live = np.flatnonzero(lengths > t)
            if len(live) == n:
                h = (h ^ data[starts + t].astype(np.uint64)) * _FNV_PRIME
            else:
                h[live] = (h[live] ^ data[starts[live] + t].astype(np.uint64)) * _FNV_PRIME
        return _mix(h ^ lengths.astype(np.uint64))


def key_hash(keys, seed: int, purpose: str, base: np.ndarray | None = None) -> np.ndarray:
    """uint64 hash of each key, seeded by (seed, purpose); ``base`` = the
    keys' :func:`base_hash` when already known."""
    b = base_hash(keys) if base is None else np.asarray(base, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return _mix(b ^ _salt(seed, purpose))


def row_hash(pairs, seed: int, purpose: str) -> np.ndarray:
    """:func:`key_hash` of a block's keys, from the base hashes the pipeline
    put in ``pairs.extra['key_hash']`` when present."""
    return key_hash(pairs.keys, seed, purpose, base=pairs.extra.get("key_hash"))


def as_uniform(hashes: np.ndarray) -> np.ndarray:
    """float64 in [0, 1) from uint64 hashes (their top 53 bits)."""
    return (np.asarray(hashes, np.uint64) >> np.uint64(11)).astype(np.float64) * 2.0**-53


def key_uniform(keys, seed: int, purpose: str, base: np.ndarray | None = None) -> np.ndarray:
    """float64 in [0, 1) per key: its seeded hash, as a uniform draw."""
    return as_uniform(key_hash(keys, seed, purpose, base))


def row_sample_mask(pairs, rate: float, seed: int, purpose: str) -> np.ndarray:
    """A seeded Bernoulli(rate) mask over a block's rows decided by each
    row's key, so the same samples are drawn in any row order."""
    if rate >= 1.0:
        return np.ones(len(pairs), dtype=bool)
    return as_uniform(row_hash(pairs, seed, purpose)) < rate


def hash_order(hashes: np.ndarray) -> np.ndarray:
    """Positions sorted by hash: a shuffle that gives every key the same
    place whatever order the keys come in (equal keys keep their order)."""
    return np.argsort(np.asarray(hashes, np.uint64), kind="stable")

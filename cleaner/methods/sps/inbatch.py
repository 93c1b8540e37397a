"""SPS's per-sample InfoNCE loss and match probability within seeded loss batches.

The scorer (:mod:`cleaner.methods.sps.scorer`) fits and replays a GMM on
these losses; computing them -- cutting a block of rows into seeded
batches and scoring many equal-size batches in one vectorised numpy step --
is the hot part of SPS and has no fitted state, so it lives here. The
offline batching rules are described in the scorer's module doc.

Batches are cut from a seeded order of the block's rows: a permutation of
their positions, or (``by_key``, what the pipeline uses) the order of a
seeded hash of each row's sample key -- then a sample gets the same batch
mates, hence the same loss, whatever order its shard lists the rows in.

Speed: each batch's logits are one BLAS matrix product (a stacked
``matmul`` against a transposed view falls back to numpy's own slow loop),
and the softmax arithmetic runs in float32 with one shift per step (logits
of unit vectors lie within +-1/temperature), with the float64 per-row path
kept for inputs whose logits span too wide a range for that. The values of
a block are memoised in ``pairs.extra``: the pipeline hands the same dict
to a shard's fit, index and transform passes, so they are computed once.
"""

from __future__ import annotations

import hashlib

import numpy as np

from cleaner.methods.base import Pairs
from cleaner.methods.sampling import hash_order, row_hash
from cleaner.methods.threads import parallel_map, single_threaded_blas

# Number of batches scored in one vectorised step (bounds temporary memory).
BATCHES_PER_STEP = 64
# Widest logit range (max - min within a step) the float32 one-shift path
# takes: exp(-60) ~ 1e-26 is still a normal float32.
F32_SPAN = 60.0


def batch_seed(seed: int, seed_key: str) -> np.random.SeedSequence:
    """Seed derived from (seed, seed_key) only, stable across runs and machines."""
    digest = hashlib.sha256(seed_key.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.SeedSequence([int(seed), *words])


def loss_batches(
    n: int, batch_size: int, seed: int, seed_key: str, order: np.ndarray | None = None
) -> list[np.ndarray]:
    """Row indices of each loss batch: a seeded permutation (or ``order``, a
    given one) cut in batch_size pieces.

    A 1-row tail is merged into the previous batch (its loss would be 0).
    """
    if n == 0:
        return []
    if order is not None:
        perm = np.asarray(order, dtype=np.int64)
    else:
        perm = np.random.default_rng(batch_seed(seed, seed_key)).permutation(n)
    batches = [perm[start : start + batch_size] for start in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] = np.concatenate([batches[-1], tail])
    return batches


def _infonce_f64(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log p(i2t), log p(t2i) of the diagonals, float64 with per-row max shifts."""
    logits = logits.astype(np.float64)
    diag = np.diagonal(logits, axis1=1, axis2=2)
    row_max = logits.max(axis=2, keepdims=True)
    row_lse = np.log(np.exp(logits - row_max).sum(axis=2)) + row_max[..., 0]
    col_max = logits.max(axis=1, keepdims=True)
    col_lse = np.log(np.exp(logits - col_max).sum(axis=1)) + col_max[:, 0, :]
    return diag - row_lse, diag - col_lse


def _infonce_f32(logits: np.ndarray, shift: np.float32) -> tuple[np.ndarray, np.ndarray]:
    """The same in float32 with one shift for the whole step (in place on logits)."""
    diag = np.diagonal(logits, axis1=1, axis2=2).copy()
    logits -= shift
    np.exp(logits, out=logits)
    row_lse = np.log(logits.sum(axis=2)) + shift
    col_lse = np.log(logits.sum(axis=1)) + shift
    return diag - row_lse, diag - col_lse


def infonce_stats(
    image: np.ndarray, text: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss and y_hat for a stack of equal-size batches.

    ``image``, ``text``: (m, B, d) float32. Returns two (m, B) float32
    arrays: ``CE(i2t) + CE(t2i)`` and the mean of the row- and
    column-softmax diagonals (the released ``predict``).
    """
    m, size, _ = image.shape
    logits = np.empty((m, size, size), dtype=np.float32)
    for b in range(m):  # BLAS per batch (see the module doc)
        np.matmul(image[b], text[b].T, out=logits[b])
    logits *= np.float32(1.0 / temperature)
    hi, lo = float(logits.max()), float(logits.min())
    if hi - lo <= F32_SPAN:
        log_p_i2t, log_p_t2i = _infonce_f32(logits, np.float32(hi))
    else:
        log_p_i2t, log_p_t2i = _infonce_f64(logits)
    loss = -(log_p_i2t + log_p_t2i)
    y_hat = 0.5 * (np.exp(log_p_i2t) + np.exp(log_p_t2i))
    return loss.astype(np.float32), y_hat.astype(np.float32)


def batch_stats(
    pairs: Pairs,
    batch_size: int,
    temperature: float,
    seed: int,
    seed_key: str,
    by_key: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 per-row ``CE(i2t) + CE(t2i)`` and y_hat, each row in its loss batch.

    ``by_key``: batches from the seeded hash order of the rows' keys (order
    independent) instead of a seeded permutation of their positions. A block
    of a single row (no batch) keeps loss 0 and y_hat 1. Memoised in
    ``pairs.extra`` (returned arrays are shared: do not modify them).
    """
    memo_key = ("sps_batch_stats", int(batch_size), float(temperature), int(seed), seed_key, by_key)
    hit = pairs.extra.get(memo_key)
    if hit is not None and len(hit[0]) == len(pairs):
        return hit
    n = len(pairs)
    loss = np.zeros(n, dtype=np.float32)
    y_hat = np.ones(n, dtype=np.float32)
    order = hash_order(row_hash(pairs, seed, "sps-batch:" + seed_key)) if by_key else None
    batches = loss_batches(n, batch_size, seed, seed_key, order)
    # All batches but (possibly) the last have batch_size rows: stack
    # them to score many in one step; the odd one goes alone. Steps run on
    # the thread pool with one BLAS thread each (see threads.py).
    full = [bt for bt in batches if len(bt) == batch_size]
    steps = [
        np.stack(full[s : s + BATCHES_PER_STEP]) for s in range(0, len(full), BATCHES_PER_STEP)
    ]
    steps += [bt[None, :] for bt in batches if batch_size != len(bt) > 1]

    def score(idx: np.ndarray) -> None:
        loss[idx], y_hat[idx] = infonce_stats(pairs.image[idx], pairs.text[idx], temperature)

    with single_threaded_blas():
        parallel_map(score, steps)
    pairs.extra[memo_key] = (loss, y_hat)
    return loss, y_hat

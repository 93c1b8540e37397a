"""SPS's per-sample InfoNCE loss and match probability within seeded loss batches.

The scorer (:mod:`cleaner.methods.sps.scorer`) fits and replays a GMM on
these losses; computing them -- cutting a block of rows into seeded
batches and scoring many equal-size batches in one vectorised numpy step --
is the hot part of SPS and has no fitted state, so it lives here. The
offline batching rules are described in the scorer's module doc.
"""

from __future__ import annotations

import hashlib

import numpy as np

from cleaner.methods.base import Pairs

# Number of batches scored in one vectorised step (bounds temporary memory).
BATCHES_PER_STEP = 64


def batch_seed(seed: int, seed_key: str) -> np.random.SeedSequence:
    """Seed derived from (seed, seed_key) only, stable across runs and machines."""
    digest = hashlib.sha256(seed_key.encode("utf-8")).digest()
    words = [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 16, 4)]
    return np.random.SeedSequence([int(seed), *words])


def loss_batches(n: int, batch_size: int, seed: int, seed_key: str) -> list[np.ndarray]:
    """Row indices of each loss batch: a seeded permutation cut in batch_size pieces.

    A 1-row tail is merged into the previous batch (its loss would be 0).
    """
    if n == 0:
        return []
    perm = np.random.default_rng(batch_seed(seed, seed_key)).permutation(n)
    batches = [perm[start : start + batch_size] for start in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        tail = batches.pop()
        batches[-1] = np.concatenate([batches[-1], tail])
    return batches


def infonce_stats(
    image: np.ndarray, text: np.ndarray, temperature: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row loss and y_hat for a stack of equal-size batches.

    ``image``, ``text``: (m, B, d) float32. Returns two (m, B) float64 arrays:
    ``CE(i2t) + CE(t2i)`` and the mean of the row- and column-softmax
    diagonals (the released ``predict``).
    """
    # float32 matmul (the embeddings' precision, and much faster than
    # float64 batched matmul), softmax arithmetic in float64.
    logits = np.matmul(image, np.swapaxes(text, 1, 2)).astype(np.float64) / temperature
    diag = np.diagonal(logits, axis1=1, axis2=2)
    # log-sum-exp with max subtraction: logits reach 1/0.07 ~ 14 in magnitude.
    row_max = logits.max(axis=2, keepdims=True)
    row_lse = np.log(np.exp(logits - row_max).sum(axis=2)) + row_max[..., 0]
    col_max = logits.max(axis=1, keepdims=True)
    col_lse = np.log(np.exp(logits - col_max).sum(axis=1)) + col_max[:, 0, :]
    log_p_i2t = diag - row_lse
    log_p_t2i = diag - col_lse
    loss = -(log_p_i2t + log_p_t2i)
    y_hat = 0.5 * (np.exp(log_p_i2t) + np.exp(log_p_t2i))
    return loss, y_hat


def _score_into(
    pairs: Pairs,
    idx: np.ndarray,
    temperature: float,
    loss: np.ndarray,
    y_hat: np.ndarray,
) -> None:
    """Score the batches whose rows ``idx`` (m, B) lists, writing in place."""
    batch_loss, batch_y = infonce_stats(pairs.image[idx], pairs.text[idx], temperature)
    loss[idx] = batch_loss
    y_hat[idx] = batch_y


def batch_stats(
    pairs: Pairs, batch_size: int, temperature: float, seed: int, seed_key: str
) -> tuple[np.ndarray, np.ndarray]:
    """float32 per-row ``CE(i2t) + CE(t2i)`` and y_hat, each row in its loss batch.

    A block of a single row (no batch) keeps loss 0 and y_hat 1.
    """
    n = len(pairs)
    loss = np.zeros(n, dtype=np.float64)
    y_hat = np.ones(n, dtype=np.float64)
    batches = loss_batches(n, batch_size, seed, seed_key)
    # All batches but (possibly) the last have batch_size rows: stack
    # them to score many in one matmul; the odd one goes alone.
    full = [bt for bt in batches if len(bt) == batch_size]
    odd = [bt for bt in batches if len(bt) != batch_size]
    for start in range(0, len(full), BATCHES_PER_STEP):
        idx = np.stack(full[start : start + BATCHES_PER_STEP])
        _score_into(pairs, idx, temperature, loss, y_hat)
    for bt in odd:
        if len(bt) > 1:
            _score_into(pairs, bt[None, :], temperature, loss, y_hat)
    return loss.astype(np.float32), y_hat.astype(np.float32)

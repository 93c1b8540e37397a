"""Row-wise log-probability helpers shared by CLIPCleaner's estimators,
selectors and scorer.

Both estimators (zero-shot and induced) end in a log-softmax, and the
selectors and the scorer reduce an (n, K) matrix to the few numbers per row
they need; these helpers sit apart so the estimator and selector modules do
not import each other. Convention: ``labels`` use ``-1`` for a missing label,
and such rows get ``-1`` / NaN outputs.
"""

from __future__ import annotations

import numpy as np


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    z = z - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _label_stats(
    log_p: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: predicted class, log p(label | x), max_k log p(k | x).

    Only these three numbers per row are needed downstream, which is what
    lets the scorer keep out-of-fold results compactly (no (n, K) matrix).
    Invalid rows get pred -1 and NaN logs.
    """
    valid = labels >= 0
    pred = np.where(valid, log_p.argmax(axis=1), -1).astype(np.int64)
    log_p_max = log_p.max(axis=1)
    log_p_label = np.take_along_axis(log_p, np.where(valid, labels, 0)[:, None], axis=1)[:, 0]
    return (
        pred,
        np.where(valid, log_p_label, np.nan),
        np.where(valid, log_p_max, np.nan),
    )


def _log_p_label(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    valid = labels >= 0
    with np.errstate(divide="ignore"):
        out = np.log(np.take_along_axis(p, np.where(valid, labels, 0)[:, None], axis=1)[:, 0])
    return np.where(valid, out, np.nan)

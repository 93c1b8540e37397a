"""Label validation and the label-stratified fit sample for CLIPCleaner.

Kept apart from the estimators and selectors because both concern the raw
label array before any probability exists: :func:`_check_labels` enforces
the shared convention (int labels, ``-1`` = missing) and
:func:`stratified_sample` picks the rows a ``max_fit_samples`` fit uses.
"""

from __future__ import annotations

import numpy as np


def _check_labels(labels: np.ndarray | None, n: int, n_classes: int) -> np.ndarray:
    if labels is None:
        raise ValueError("CLIPCleaner needs class labels (pairs.labels)")
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    bad = (labels < -1) | (labels >= n_classes)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} label(s) outside [-1, {n_classes}); e.g. {labels[bad][:5].tolist()}"
        )
    return labels


def stratified_sample(labels: np.ndarray, max_samples: int, seed: int = 0) -> np.ndarray:
    """Seeded sample of at most `max_samples` row indices, stratified by
    label: each class gets its proportional share (largest remainder) and at
    least one row, so every class is represented in the fit.

    Returns sorted indices into `labels` (all rows if there are few enough).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if n <= max_samples:
        return np.arange(n)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if max_samples < len(classes):
        raise ValueError(
            f"max_fit_samples={max_samples} is below the number of labelled classes ({len(classes)})"
        )
    exact = max_samples * counts / n
    quota = np.minimum(np.maximum(np.floor(exact).astype(np.int64), 1), counts)
    while quota.sum() > max_samples:  # the minimum of 1 overshot: trim the largest
        quota[np.argmax(quota)] -= 1
    while quota.sum() < max_samples:  # hand out the rest by largest remainder
        room = np.flatnonzero(quota < counts)  # non-empty: max_samples < n
        order = room[np.argsort(-(exact - quota)[room], kind="stable")]
        quota[order[: max_samples - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.permutation(np.flatnonzero(inverse == i))[:q] for i, q in enumerate(quota.tolist())
    ]
    return np.sort(np.concatenate(picked))

"""CLIPCleaner's induced estimator: a logistic regression on the frozen image
embeddings, scored out-of-fold, and the out-of-fold table the scorer keeps.

A module of its own because it is the only part of the method that trains a
model on the noisy labels (sklearn's ``LogisticRegression`` and fold
splitters live here and nowhere else), and because its out-of-fold results
must outlive ``fit``: :func:`oof_table` packs them compactly and
:func:`use_oof_table` puts them back in place at ``transform``.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold, StratifiedKFold

from cleaner.methods.clipcleaner.logprob import _log_softmax

# The out-of-fold table's arrays: three numbers per fit row, keyed by row id
# (sorted) and the label the row had when fitted.
OOF_FIELDS = ("row_ids", "labels", "pred", "log_p_label", "log_p_max")


def _fit_lr(x: np.ndarray, y: np.ndarray, seed: int) -> dict:
    """LogisticRegression as CLIPCleaner fits it, returned as a softmax over
    the classes it saw: log p = log_softmax(x @ coef.T + intercept)."""
    classes = np.unique(y)
    if len(classes) == 1:
        # sklearn refuses one class; the only sensible model predicts it.
        return {"classes": classes, "coef": np.zeros((1, x.shape[1])), "intercept": np.zeros(1)}
    clf = LogisticRegression(max_iter=10000, class_weight="balanced", C=1.0, random_state=seed)
    clf.fit(x, y)
    coef, intercept = clf.coef_.astype(np.float64), clf.intercept_.astype(np.float64)
    if len(classes) == 2:
        # binary sklearn stores one logit z for class 1: sigmoid(z) is the
        # softmax of (-z/2, z/2), so one representation covers both cases.
        coef = np.vstack([-coef / 2, coef / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return {"classes": classes, "coef": coef, "intercept": intercept}


def _lr_log_probs(x: np.ndarray, lr: dict, n_classes: int) -> np.ndarray:
    """(n, K) log-probabilities; classes the model never saw get -inf."""
    z = np.asarray(x, dtype=np.float64) @ lr["coef"].T + lr["intercept"]
    out = np.full((len(z), n_classes), -np.inf)
    out[:, np.asarray(lr["classes"], dtype=np.int64)] = _log_softmax(z)
    return out


def induced_log_probs(
    image_emb: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    induced: str = "oof",
    n_folds: int = 5,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """The induced classifier's log p(k | x) for labelled rows.

    ``LogisticRegression(max_iter=10000, class_weight='balanced', C=1)`` on
    the frozen image embeddings and the (noisy) labels. With ``induced='oof'``
    each row is scored by a model fitted on the other folds
    (``StratifiedKFold(n_folds, shuffle=True, random_state=seed)``), so a row's
    own label never vouches for itself; ``'in-sample'`` is the released code.

    Classes with fewer members than folds are allowed (sklearn only warns):
    such a class may be absent from some training folds, and its held-out
    members then get p = 0 for their label -- nothing else in the data
    supports it. A class with a single member is always in that case. If
    no class has two members, plain ``KFold`` is used.

    Parameters
    ----------
    image_emb : np.ndarray
        (n, d) embeddings; all rows must be labelled (no -1).
    labels : np.ndarray
        (n,) int labels in [0, n_classes).
    n_classes : int
    induced : {'oof', 'in-sample'}
    n_folds : int, default 5
    seed : int, default 0

    Returns
    -------
    log_p : np.ndarray
        (n, K) float64 log-probabilities (-inf for classes a model never saw).
    model : dict
        The model fitted on all rows: ``classes``, ``coef`` (C, d),
        ``intercept`` (C,), used for rows outside the fit set.
    """
    x = np.asarray(image_emb, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    if (y < 0).any():
        raise ValueError("induced_log_probs needs labelled rows only")
    if len(y) < 2:
        raise ValueError("the induced classifier needs at least 2 labelled rows")
    model = _fit_lr(x, y, seed)
    if induced == "in-sample":
        return _lr_log_probs(x, model, n_classes), model
    if induced != "oof":
        raise ValueError(f"induced must be 'oof' or 'in-sample', got {induced!r}")
    out = np.empty((len(y), n_classes), dtype=np.float64)
    for train, test in _folds(x, y, n_folds, seed):
        out[test] = _lr_log_probs(x[test], _fit_lr(x[train], y[train], seed), n_classes)
    return out, model


def _folds(x: np.ndarray, y: np.ndarray, n_folds: int, seed: int) -> list:
    """(train, test) index pairs: stratified when some class has two members,
    plain ``KFold`` otherwise (see :func:`induced_log_probs`)."""
    counts = np.bincount(y)
    n_splits = min(n_folds, int(counts.max()))
    if n_splits >= 2:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=min(n_folds, len(y)), shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class in y has only 1 members": such classes
        # are allowed, their held-out members just get p = 0 for the label.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        return list(splitter.split(x, y))


def oof_table(row_ids: np.ndarray, labels: np.ndarray, stats: tuple) -> dict[str, np.ndarray]:
    """The out-of-fold table (:data:`OOF_FIELDS`) from the fit rows' ids,
    labels and ``(pred, log_p_label, log_p_max)``, sorted by row id so
    :func:`use_oof_table` can binary-search it."""
    order = np.argsort(row_ids)
    pred, lpl, lpm = stats
    return {
        "row_ids": row_ids[order],
        "labels": labels[order],
        "pred": pred[order],
        "log_p_label": lpl[order],
        "log_p_max": lpm[order],
    }


def use_oof_table(stats: tuple, labels: np.ndarray, row_ids: np.ndarray, table: dict) -> None:
    """Overwrite, in place, the ``(pred, log_p_label, log_p_max)`` arrays of
    the rows found in the out-of-fold `table` (same row id and label)."""
    ids = np.asarray(table["row_ids"], dtype=np.int64)
    if not len(ids):
        return
    pos = np.minimum(np.searchsorted(ids, row_ids), len(ids) - 1)
    # the label must match too: a row relabelled since the fit is new data
    hit = (ids[pos] == row_ids) & (np.asarray(table["labels"])[pos] == labels) & (labels >= 0)
    for out, field in zip(stats, ("pred", "log_p_label", "log_p_max"), strict=True):
        out[hit] = np.asarray(table[field])[pos[hit]]

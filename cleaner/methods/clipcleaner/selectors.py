"""CLIPCleaner's selectors: which samples keep their label, per estimate.

- :func:`consistency_select`: the label is (nearly) the arg-max;
- :func:`gmm_select`: the label's log-probability falls in the high mode of a
  per-class two-component GMM (:func:`fit_class_gmms` fits the mixtures,
  :func:`gmm_posterior` applies them to any rows);
- :func:`fallback_thresholds`: a class left with no selected sample gets its
  best-scoring ones.

Separate from the estimators because the selectors only see probabilities,
whatever produced them (usable on their own in the style of
``cleanlab.filter``); the scorer combines their verdicts.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.mixture import GaussianMixture

from cleaner.methods.clipcleaner.logprob import _log_p_label

# log p(y|x) is floored before the GMM: an out-of-fold model that never saw a
# class gives p = 0 (log = -inf), which would break the min-max normalisation,
# and a few astronomically small values would squash every other score of the
# class into a sliver of [0, 1]. Nothing that improbable is clean anyway.
LOG_P_FLOOR = float(np.log(1e-30))

# Below this many rows (or with all scores equal) a class's GMM has no two
# modes to find; the GMM selector then abstains for the class: posterior 1.0,
# so it never rejects and the other selectors decide. The released code
# crashes here (0/0 in the normalisation; GaussianMixture needs >= 2 rows).
MIN_GMM_SAMPLES = 10


def label_quality(p: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Self-confidence label-quality score: p(given label | x).

    Parameters
    ----------
    p : np.ndarray
        (n, K) class probabilities.
    labels : np.ndarray
        (n,) int labels, -1 = missing.

    Returns
    -------
    quality : np.ndarray
        (n,) float64 in [0, 1]; NaN where the label is missing.
    """
    labels = np.asarray(labels, dtype=np.int64)
    return np.exp(_log_p_label(p, labels))


def _consistency_from_logs(
    log_p_label: np.ndarray, log_p_max: np.ndarray, theta: float
) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        # exp(a - a) is exactly 1, so theta = 1.0 means "label is an arg-max"
        return np.exp(log_p_label - log_p_max) >= theta


def consistency_select(p: np.ndarray, labels: np.ndarray, theta: float = 0.8) -> np.ndarray:
    """Keep a sample when its label is (nearly) the most probable class.

    Parameters
    ----------
    p : np.ndarray
        (n, K) class probabilities.
    labels : np.ndarray
        (n,) int labels, -1 = missing.
    theta : float, default 0.8
        Keep i if ``p[i, y_i] / max_k p[i, k] >= theta``; 1.0 demands that the
        label be an arg-max (the released default is 0.8).

    Returns
    -------
    keep : np.ndarray
        (n,) bool; False for missing labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_p_max = np.log(p.max(axis=1))
    return _consistency_from_logs(_log_p_label(p, labels), log_p_max, theta) & (labels >= 0)


def gmm_score(log_p_label: np.ndarray) -> np.ndarray:
    """The GMM selector's raw score: log p(y | x), floored at
    :data:`LOG_P_FLOOR` (NaN stays NaN)."""
    return np.maximum(log_p_label, LOG_P_FLOOR)


def fit_class_gmms(
    scores: np.ndarray,
    labels: np.ndarray,
    n_classes: int,
    random_state: int = 0,
    min_samples: int = MIN_GMM_SAMPLES,
) -> list[dict]:
    """Fit one two-component GMM per given-label class on min-max normalised
    scores.

    Returns, per class, a JSON-able dict ``{"n", "lo", "hi", "mix"}``: the
    class's row count, score minimum and maximum (the normalisation), and
    ``mix`` = ``{"weights", "means", "variances"}`` ordered (noisy, clean),
    i.e. by ascending mean -- or ``None`` when the class has fewer than
    `min_samples` rows or constant scores, in which case
    :func:`gmm_posterior` abstains (posterior 1.0).
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    out = []
    for c in range(n_classes):
        s = scores[labels == c]
        entry: dict = {"n": int(len(s)), "lo": None, "hi": None, "mix": None}
        if len(s):
            lo, hi = float(s.min()), float(s.max())
            entry["lo"], entry["hi"] = lo, hi
            if len(s) >= max(2, min_samples) and hi > lo:
                z = ((s - lo) / (hi - lo))[:, None]
                gm = GaussianMixture(n_components=2, random_state=random_state).fit(z)
                order = np.argsort(gm.means_[:, 0])
                entry["mix"] = {
                    "weights": gm.weights_[order].tolist(),
                    "means": gm.means_[order, 0].tolist(),
                    "variances": gm.covariances_[order].reshape(2).tolist(),
                }
        out.append(entry)
    return out


def gmm_posterior(scores: np.ndarray, labels: np.ndarray, gmms: Sequence[dict]) -> np.ndarray:
    """Posterior of the higher-mean ("clean") component under each row's
    given-label class GMM from :func:`fit_class_gmms`.

    Scores are normalised with the class's fitted (lo, hi) and clipped to
    [0, 1], so rows outside the fit set cannot land in a Gaussian tail the
    fit never saw. Classes without a mixture give 1.0 (abstain); missing
    labels give NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    k = len(gmms)
    has = np.array([g["mix"] is not None for g in gmms] + [False])
    lo = np.array([g["lo"] if g["mix"] else 0.0 for g in gmms] + [0.0])
    span = np.array([(g["hi"] - g["lo"]) if g["mix"] else 1.0 for g in gmms] + [1.0])
    w = np.array([g["mix"]["weights"] if g["mix"] else [0.5, 0.5] for g in gmms] + [[0.5, 0.5]])
    mu = np.array([g["mix"]["means"] if g["mix"] else [0.0, 1.0] for g in gmms] + [[0.0, 1.0]])
    var = np.array([g["mix"]["variances"] if g["mix"] else [1.0, 1.0] for g in gmms] + [[1, 1]])
    valid = labels >= 0
    c = np.where(valid, labels, k)  # row k of the tables = dummy for invalid rows
    z = np.clip((np.nan_to_num(scores) - lo[c]) / span[c], 0.0, 1.0)[:, None]
    log_joint = np.log(w[c]) - 0.5 * (np.log(2 * np.pi * var[c]) + (z - mu[c]) ** 2 / var[c])
    post = np.exp(log_joint[:, 1] - np.logaddexp(log_joint[:, 0], log_joint[:, 1]))
    post = np.where(has[c], post, 1.0)
    return np.where(valid, post, np.nan)


def gmm_clean_prob(
    p: np.ndarray, labels: np.ndarray, random_state: int = 0, n_classes: int | None = None
) -> np.ndarray:
    """Per-class GMM posterior that a sample's label is clean.

    The score is log p(y_i | x_i) (floored at :data:`LOG_P_FLOOR`),
    min-max normalised within each given-label class; a separate
    two-component ``GaussianMixture(random_state=random_state)`` is fitted per
    class and the posterior of its higher-mean component is returned.
    Classes with fewer than :data:`MIN_GMM_SAMPLES` rows or constant scores
    get 1.0 (the selector abstains; see the module constant).

    Parameters
    ----------
    p : np.ndarray
        (n, K) class probabilities.
    labels : np.ndarray
        (n,) int labels, -1 = missing (NaN output, not fitted).
    random_state : int, default 0
    n_classes : int, optional
        K; defaults to ``p.shape[1]``.

    Returns
    -------
    clean_prob : np.ndarray
        (n,) float64 in [0, 1], NaN for missing labels.
    """
    labels = np.asarray(labels, dtype=np.int64)
    k = p.shape[1] if n_classes is None else n_classes
    scores = gmm_score(_log_p_label(p, labels))
    return gmm_posterior(scores, labels, fit_class_gmms(scores, labels, k, random_state))


def gmm_select(
    p: np.ndarray, labels: np.ndarray, theta: float = 0.5, random_state: int = 0
) -> np.ndarray:
    """Keep a sample when :func:`gmm_clean_prob` >= `theta` (default 0.5).

    Returns
    -------
    keep : np.ndarray
        (n,) bool; False for missing labels.
    """
    with np.errstate(invalid="ignore"):
        return gmm_clean_prob(p, labels, random_state) >= theta


def fallback_thresholds(
    scores: np.ndarray, labels: np.ndarray, selected: np.ndarray, n_classes: int
) -> dict[int, float]:
    """Score thresholds that refill classes left with no selected sample.

    A class with rows but no selected row gets its best-scoring rows:
    ``m = max(smallest non-empty selected-class count, int(N / K**2), 1)`` of
    them (at most the whole class), N = labelled rows, K = `n_classes`. The
    released code sorts ascending here and so picks the *worst* rows; we pick
    the best.

    The choice is returned as a threshold per refilled class rather than a
    row list, so it also applies to rows outside the fit set: the midpoint
    between the m-th and (m+1)-th best score (just below the worst score when
    the whole class is taken). Rows of the class with ``score >= threshold``
    are selected; exact ties at the m-th score are all kept.

    Parameters
    ----------
    scores : np.ndarray
        (n,) ranking score, higher = cleaner (CLIPCleaner: the zero-shot
        log p(y | x), whose per-class min-max normalisation is monotone).
    labels : np.ndarray
        (n,) int labels, -1 = missing (ignored).
    selected : np.ndarray
        (n,) bool selection before the refill.
    n_classes : int

    Returns
    -------
    thresholds : dict[int, float]
        Class id -> threshold, only for refilled classes.
    """
    labels = np.asarray(labels, dtype=np.int64)
    valid = labels >= 0
    n_all = np.bincount(labels[valid], minlength=n_classes)
    n_sel = np.bincount(labels[valid & selected], minlength=n_classes)
    empty = np.flatnonzero((n_all > 0) & (n_sel == 0))
    if not len(empty):
        return {}
    smallest = int(n_sel[n_sel > 0].min()) if (n_sel > 0).any() else 0
    m = max(smallest, int(valid.sum() / n_classes / n_classes), 1)
    out: dict[int, float] = {}
    for c in empty:
        s = np.sort(np.asarray(scores, dtype=np.float64)[labels == c])[::-1]
        take = min(m, len(s))
        if take < len(s):
            out[int(c)] = float((s[take - 1] + s[take]) / 2)
        else:
            out[int(c)] = float(s[-1] - 1e-6 * max(1.0, abs(s[-1])))
    return out


def _apply_fallback(
    scores: np.ndarray, labels: np.ndarray, thresholds: dict[int, float], n_classes: int
) -> np.ndarray:
    thr = np.full(n_classes + 1, np.inf)  # last slot: missing labels, never
    for c, t in thresholds.items():
        thr[int(c)] = t
    c = np.where(labels >= 0, labels, n_classes)
    with np.errstate(invalid="ignore"):
        return scores >= thr[c]

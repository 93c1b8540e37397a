"""CLIPCleaner: select the samples whose class label a frozen CLIP agrees with.

Methods (METHODS.md section 3): two estimates of P(y | x) that never trained
on the noisy labels of the rows they judge --

- ``zs``: CLIP zero-shot probabilities from class prompts
  (:func:`zero_shot_probs`);
- ``ind``: an "induced" logistic regression on the frozen image embeddings,
  cross-fitted (out-of-fold) by default (:func:`induced_log_probs`);

and two selectors applied to each -- :func:`consistency_select` (the label is
(nearly) the arg-max) and :func:`gmm_select` (the label's log-probability
falls in the high mode of a per-class two-component GMM). The final
selection combines the four verdicts (intersection by default) and gives any
class left empty its best-scoring samples (:func:`fallback_thresholds`).

The functions are the method, usable on their own in the style of
``cleanlab.filter``; :class:`CLIPCleanerScorer` wraps them in the scorer
contract of :mod:`cleaner.methods.base` (fit global statistics once, then
transform shard by shard).

Conventions shared by every function here: ``labels`` are int arrays with
``-1`` for a missing/invalid label; such rows never enter a fit and get
``False`` / NaN / ``-1`` outputs. Probabilities are float64 arrays of shape
(n, K); scores derived from them are computed in log space.
"""

from __future__ import annotations

import base64
import warnings
from collections.abc import Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import KFold, StratifiedKFold

from cleaner.methods.base import Pairs

ESTIMATORS = ("zs", "ind")
SELECTORS = ("consistency", "gmm")

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

# Zero-shot logits are computed in row blocks of at most this many
# (row, prompt) entries, so memory stays bounded for 1000 classes x 18 prompts.
_ZS_BLOCK = 1 << 22


# ----------------------------------------------------------------------------
# small helpers


def _log_softmax(z: np.ndarray) -> np.ndarray:
    m = z.max(axis=1, keepdims=True)
    z = z - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


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


# ----------------------------------------------------------------------------
# estimators


def zero_shot_log_probs(
    image_emb: np.ndarray,
    prompt_emb: np.ndarray,
    class_of_prompt: np.ndarray,
    temperature: float = 0.07,
    aggregate: str = "sum",
    n_classes: int | None = None,
) -> np.ndarray:
    """Log of :func:`zero_shot_probs`; see there. Computed without ever
    forming exp(cos / T) unshifted, so small temperatures cannot overflow."""
    if aggregate not in ("sum", "mean"):
        raise ValueError(f"aggregate must be 'sum' or 'mean', got {aggregate!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = _unit(image_emb)
    t = _unit(prompt_emb)
    cop = np.asarray(class_of_prompt, dtype=np.int64)
    if cop.shape != (len(t),):
        raise ValueError("class_of_prompt must give one class per prompt embedding")
    k = int(cop.max()) + 1 if n_classes is None else int(n_classes)
    if cop.min() < 0 or cop.max() >= k:
        raise ValueError(f"class_of_prompt values must lie in [0, {k})")
    counts = np.bincount(cop, minlength=k)
    if (counts == 0).any():
        raise ValueError(f"classes without prompts: {np.flatnonzero(counts == 0)[:20].tolist()}")
    # Sort prompts by class so per-class reductions are contiguous slices
    # (np.*.reduceat); column c of the reduced array is then class c.
    order = np.argsort(cop, kind="stable")
    t, cop = t[order], cop[order]
    starts = np.flatnonzero(np.r_[True, cop[1:] != cop[:-1]])
    out = np.empty((len(x), k), dtype=np.float64)
    step = max(1, _ZS_BLOCK // len(t))
    for s in range(0, len(x), step):
        logits = (x[s : s + step] @ t.T) / temperature
        # per-class log-sum-exp, shifted by the class's own max (stable)
        cmax = np.maximum.reduceat(logits, starts, axis=1)
        lse = np.log(np.add.reduceat(np.exp(logits - cmax[:, cop]), starts, axis=1)) + cmax
        if aggregate == "mean":
            lse -= np.log(counts)
        out[s : s + step] = _log_softmax(lse)
    return out


def zero_shot_probs(
    image_emb: np.ndarray,
    prompt_emb: np.ndarray,
    class_of_prompt: np.ndarray,
    temperature: float = 0.07,
    aggregate: str = "sum",
    n_classes: int | None = None,
) -> np.ndarray:
    """CLIP zero-shot class probabilities from several prompts per class.

    Class k scores ``sum_j exp(cos(x, t_j) / temperature)`` over its prompts
    t_j (or the mean, with ``aggregate='mean'``); scores are normalised over
    classes. Summing, as the released code does, gives a class with more
    prompts a prior boost of log(J_k); averaging removes it.

    Parameters
    ----------
    image_emb : np.ndarray
        (n, d) image embeddings (normalised here again, to be safe).
    prompt_emb : np.ndarray
        (P, d) prompt embeddings.
    class_of_prompt : np.ndarray
        (P,) int class of each prompt; every class needs at least one.
    temperature : float, default 0.07
        Softmax temperature on the cosine (CLIPCleaner's 0.07, not CLIP's
        logit scale 100 = 1/0.01).
    aggregate : {'sum', 'mean'}, default 'sum'
    n_classes : int, optional
        K; defaults to ``class_of_prompt.max() + 1``.

    Returns
    -------
    p : np.ndarray
        (n, K) float64, rows sum to 1.
    """
    return np.exp(
        zero_shot_log_probs(
            image_emb, prompt_emb, class_of_prompt, temperature, aggregate, n_classes
        )
    )


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
    counts = np.bincount(y)
    n_splits = min(n_folds, int(counts.max()))
    if n_splits >= 2:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:
        splitter = KFold(n_splits=min(n_folds, len(y)), shuffle=True, random_state=seed)
    out = np.empty((len(y), n_classes), dtype=np.float64)
    with warnings.catch_warnings():
        # "The least populated class in y has only 1 members": handled above.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        folds = list(splitter.split(x, y))
    for train, test in folds:
        out[test] = _lr_log_probs(x[test], _fit_lr(x[train], y[train], seed), n_classes)
    return out, model


# ----------------------------------------------------------------------------
# selectors


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


# ----------------------------------------------------------------------------
# the scorer


def _b64_f32(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "float32_b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _from_b64_f32(d: dict) -> np.ndarray:
    raw = base64.b64decode(d["float32_b64"])
    return np.frombuffer(raw, dtype="<f4").reshape(d["shape"]).astype(np.float32)


OOF_FIELDS = ("row_ids", "labels", "pred", "log_p_label", "log_p_max")


class CLIPCleanerScorer:
    """CLIPCleaner as a fit/transform scorer (see :mod:`cleaner.methods.base`).

    Parameters
    ----------
    n_classes : int
        K; labels lie in [0, K), -1 = missing.
    theta_cons : float, default 0.8
        Consistency threshold on p(y|x) / max_k p(k|x).
    theta_gmm : float, default 0.5
        Threshold on the clean-component posterior.
    temperature : float, default 0.07
        Zero-shot softmax temperature on cosines.
    prompt_aggregate : {'sum', 'mean'}, default 'sum'
        How a class's prompts combine (sum = released code).
    induced : {'oof', 'in-sample'}, default 'oof'
        How fit-set rows get their induced-classifier probabilities.
    n_folds : int, default 5
    estimators : tuple, default ('zs', 'ind')
        Which probability estimates vote. The first one also ranks rows for
        the empty-class fallback (zero-shot by default, as released).
    selectors : tuple, default ('consistency', 'gmm')
    combine : {'intersection', 'union'}, default 'intersection'
        How the len(estimators) x len(selectors) verdicts combine.
    max_fit_samples : int, optional
        Fit on a seeded stratified sample of at most this many labelled rows.
    seed : int, default 0
        Seeds the sample, the folds, the GMMs and the regression.

    Two-phase use
    -------------
    ``fit(pairs, prompt_emb, class_of_prompt)`` runs the whole method on the
    labelled rows of `pairs` (or the sample) and keeps the global state: the
    prompt embeddings, the induced regression fitted on all fit rows, one GMM
    per class and estimator (with the class's score min/max), and a score
    threshold per class refilled by the fallback. ``transform(pairs)`` then
    recomputes every column of any shard from that state alone.

    Out-of-fold rows: with ``induced='oof'`` a fit row must be judged by the
    model that did *not* see it, not by the all-rows model. ``fit`` therefore
    keeps an out-of-fold table, :attr:`oof_`: a dict of arrays
    (``row_ids`` sorted, ``labels``, ``pred``, ``log_p_label``,
    ``log_p_max``: three numbers per row, not an (n, K) matrix), which is too
    large for the JSON params. ``transform`` looks each row up there by
    ``row_id`` (matching the label too) and uses the all-rows model only for
    rows not found -- rows outside a ``max_fit_samples`` sample. To resume,
    save the table (e.g. ``np.savez(path, **scorer.oof_)``) next to
    ``get_params()`` and pass it back: ``from_params(params, oof=dict(np.load(path)))``.
    Transforming without a table under ``induced='oof'`` raises, rather than
    silently judging fit rows in-sample.

    Fallback: decided on the fit set (it needs every row of a class) and
    stored as a threshold on the first estimator's log p(y|x) per refilled
    class; ``transform`` adds ``score >= threshold`` to ``cc_selected`` for
    rows of those classes, which reproduces the fit-set choice exactly.
    """

    name = "clipcleaner"
    params_version = 1

    def __init__(
        self,
        n_classes: int,
        theta_cons: float = 0.8,
        theta_gmm: float = 0.5,
        temperature: float = 0.07,
        prompt_aggregate: str = "sum",
        induced: str = "oof",
        n_folds: int = 5,
        estimators: Sequence[str] = ESTIMATORS,
        selectors: Sequence[str] = SELECTORS,
        combine: str = "intersection",
        max_fit_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.n_classes = int(n_classes)
        self.theta_cons = float(theta_cons)
        self.theta_gmm = float(theta_gmm)
        self.temperature = float(temperature)
        self.prompt_aggregate = prompt_aggregate
        self.induced = induced
        self.n_folds = int(n_folds)
        self.estimators = tuple(estimators)
        self.selectors = tuple(selectors)
        self.combine = combine
        self.max_fit_samples = None if max_fit_samples is None else int(max_fit_samples)
        self.seed = int(seed)
        self._validate()
        self.oof_: dict[str, np.ndarray] | None = None
        self._fitted = False

    def _validate(self) -> None:
        if self.n_classes < 1:
            raise ValueError("n_classes must be >= 1")
        if not 0 < self.theta_cons <= 1:
            raise ValueError("theta_cons must be in (0, 1]")
        if not 0 <= self.theta_gmm <= 1:
            raise ValueError("theta_gmm must be in [0, 1]")
        if not self.temperature > 0:
            raise ValueError("temperature must be > 0")
        if self.prompt_aggregate not in ("sum", "mean"):
            raise ValueError("prompt_aggregate must be 'sum' or 'mean'")
        if self.induced not in ("oof", "in-sample"):
            raise ValueError("induced must be 'oof' or 'in-sample'")
        if self.n_folds < 2:
            raise ValueError("n_folds must be >= 2")
        for name, given, allowed in (
            ("estimators", self.estimators, ESTIMATORS),
            ("selectors", self.selectors, SELECTORS),
        ):
            if not given or len(set(given)) != len(given) or set(given) - set(allowed):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {given}")
        if self.combine not in ("intersection", "union"):
            raise ValueError("combine must be 'intersection' or 'union'")
        if self.max_fit_samples is not None and self.max_fit_samples < 2:
            raise ValueError("max_fit_samples must be >= 2")

    def settings(self) -> dict:
        return {
            "n_classes": self.n_classes,
            "theta_cons": self.theta_cons,
            "theta_gmm": self.theta_gmm,
            "temperature": self.temperature,
            "prompt_aggregate": self.prompt_aggregate,
            "induced": self.induced,
            "n_folds": self.n_folds,
            "estimators": list(self.estimators),
            "selectors": list(self.selectors),
            "combine": self.combine,
            "max_fit_samples": self.max_fit_samples,
            "seed": self.seed,
        }

    # -- fitting --------------------------------------------------------------

    def fit(
        self,
        pairs: Pairs,
        prompt_emb: np.ndarray | None = None,
        class_of_prompt: np.ndarray | None = None,
    ) -> CLIPCleanerScorer:
        """Fit on the labelled rows of `pairs` (``pairs.image`` = normalised
        image embeddings, ``pairs.labels`` = int labels, -1 = missing).
        `prompt_emb` (P, d) and `class_of_prompt` (P,) are required when
        ``'zs'`` is an estimator."""
        k = self.n_classes
        labels = _check_labels(pairs.labels, len(pairs), k)
        fit_idx = np.flatnonzero(labels >= 0)
        if len(fit_idx) < 2:
            raise ValueError("CLIPCleaner needs at least 2 labelled rows to fit")
        if self.max_fit_samples is not None:
            fit_idx = fit_idx[stratified_sample(labels[fit_idx], self.max_fit_samples, self.seed)]
        x, y = pairs.image[fit_idx], labels[fit_idx]
        row_ids = np.asarray(pairs.row_ids, dtype=np.int64)[fit_idx]
        if len(np.unique(row_ids)) != len(row_ids):
            raise ValueError("pairs.row_ids must be unique")

        self._prompt_emb = self._class_of_prompt = None
        if "zs" in self.estimators:
            if prompt_emb is None or class_of_prompt is None:
                raise ValueError("the zero-shot estimator needs prompt_emb and class_of_prompt")
            self._prompt_emb = np.asarray(prompt_emb, dtype=np.float32)
            self._class_of_prompt = np.asarray(class_of_prompt, dtype=np.int64)
            # validates prompts (every class covered) before any slow work
            zero_shot_log_probs(x[:1], self._prompt_emb, self._class_of_prompt, n_classes=k)

        stats = {}
        if "zs" in self.estimators:
            stats["zs"] = _label_stats(self._zs_log_probs(x), y)
        self._lr = None
        self.oof_ = None
        if "ind" in self.estimators:
            log_p, self._lr = induced_log_probs(x, y, k, self.induced, self.n_folds, self.seed)
            stats["ind"] = _label_stats(log_p, y)
            if self.induced == "oof":
                order = np.argsort(row_ids)
                pred, lpl, lpm = stats["ind"]
                self.oof_ = {
                    "row_ids": row_ids[order],
                    "labels": y[order],
                    "pred": pred[order],
                    "log_p_label": lpl[order],
                    "log_p_max": lpm[order],
                }
        self._gmms = {
            e: fit_class_gmms(gmm_score(stats[e][1]), y, k, self.seed) for e in self.estimators
        }
        self._fallback = {}
        base = self._columns(stats, y)["cc_selected"]
        self._fallback = fallback_thresholds(self._fallback_score(stats), y, base, k)
        self._n_fit = int(len(y))
        self._fitted = True
        selected = base | _apply_fallback(self._fallback_score(stats), y, self._fallback, k)
        self._fit_selected = np.bincount(y[selected], minlength=k).tolist()
        return self

    # -- shared by fit and transform -----------------------------------------

    def _zs_log_probs(self, x: np.ndarray) -> np.ndarray:
        return zero_shot_log_probs(
            x,
            self._prompt_emb,
            self._class_of_prompt,
            self.temperature,
            self.prompt_aggregate,
            self.n_classes,
        )

    def _fallback_score(self, stats: dict) -> np.ndarray:
        return gmm_score(stats[self.estimators[0]][1])

    def _columns(self, stats: dict, labels: np.ndarray) -> dict[str, np.ndarray]:
        n = len(labels)
        valid = labels >= 0
        cols: dict[str, np.ndarray] = {"label": labels.astype(np.int64)}
        votes = []
        quality = []
        for e in ESTIMATORS:
            if e not in self.estimators:
                # keep the schema fixed: an unused estimator's columns are null
                cols[f"cc_pred_{e}"] = np.full(n, -1, dtype=np.int64)
                cols[f"cc_p_label_{e}"] = np.full(n, np.nan, dtype=np.float32)
                cols[f"cc_consistency_{e}"] = np.zeros(n, dtype=bool)
                cols[f"cc_gmm_clean_prob_{e}"] = np.full(n, np.nan, dtype=np.float32)
                continue
            pred, lpl, lpm = stats[e]
            cons = _consistency_from_logs(lpl, lpm, self.theta_cons) & valid
            gprob = gmm_posterior(gmm_score(lpl), labels, self._gmms[e])
            with np.errstate(invalid="ignore"):
                gsel = (gprob >= self.theta_gmm) & valid
            cols[f"cc_pred_{e}"] = pred
            cols[f"cc_p_label_{e}"] = np.exp(lpl).astype(np.float32)
            cols[f"cc_consistency_{e}"] = cons
            cols[f"cc_gmm_clean_prob_{e}"] = gprob.astype(np.float32)
            quality.append(np.exp(lpl))
            if "consistency" in self.selectors:
                votes.append(cons)
            if "gmm" in self.selectors:
                votes.append(gsel)
        reduce = np.logical_and if self.combine == "intersection" else np.logical_or
        selected = reduce.reduce(votes) & valid
        if self._fallback:
            score = self._fallback_score(stats)
            selected |= _apply_fallback(score, labels, self._fallback, self.n_classes)
        cols["cc_selected"] = selected
        cols["cc_label_quality"] = np.mean(quality, axis=0).astype(np.float32)
        return cols

    # -- transforming ----------------------------------------------------------

    def transform(
        self, pairs: Pairs, oof: dict[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Columns for every row of `pairs` (a shard), from the fitted state.

        Parameters
        ----------
        pairs : Pairs
            ``image``, ``labels`` (-1 = missing) and ``row_ids`` (job-unique;
            they find fit rows in the out-of-fold table).
        oof : dict of arrays, optional
            Out-of-fold table; defaults to :attr:`oof_` from ``fit`` or
            ``from_params``. Required when ``induced='oof'``.

        Returns
        -------
        columns : dict[str, np.ndarray]
            ``label`` (int64), per estimator e in (zs, ind): ``cc_pred_e``
            (int64, -1 = null), ``cc_p_label_e`` (float32, NaN = null),
            ``cc_consistency_e`` (bool), ``cc_gmm_clean_prob_e`` (float32);
            ``cc_selected`` (bool) and ``cc_label_quality`` (float32: mean
            over the used estimators of p(y|x)). Missing labels give nulls and
            False everywhere.
        """
        if not self._fitted:
            raise RuntimeError("fit or from_params first")
        labels = _check_labels(pairs.labels, len(pairs), self.n_classes)
        x = pairs.image
        stats = {}
        if "zs" in self.estimators:
            stats["zs"] = _label_stats(self._zs_log_probs(x), labels)
        if "ind" in self.estimators:
            stats["ind"] = _label_stats(_lr_log_probs(x, self._lr, self.n_classes), labels)
            if self.induced == "oof":
                table = self.oof_ if oof is None else oof
                if table is None:
                    raise ValueError(
                        "induced='oof' needs the out-of-fold table: "
                        "from_params(params, oof=...) or transform(pairs, oof=...)"
                    )
                self._use_oof(stats["ind"], labels, np.asarray(pairs.row_ids), table)
        return self._columns(stats, labels)

    @staticmethod
    def _use_oof(stats: tuple, labels: np.ndarray, row_ids: np.ndarray, table: dict) -> None:
        ids = np.asarray(table["row_ids"], dtype=np.int64)
        if not len(ids):
            return
        pos = np.minimum(np.searchsorted(ids, row_ids), len(ids) - 1)
        # the label must match too: a row relabelled since the fit is new data
        hit = (ids[pos] == row_ids) & (np.asarray(table["labels"])[pos] == labels) & (labels >= 0)
        for out, field in zip(stats, ("pred", "log_p_label", "log_p_max"), strict=True):
            out[hit] = np.asarray(table[field])[pos[hit]]

    # -- persistence ---------------------------------------------------------

    def get_params(self) -> dict:
        """JSON-able fitted state (not the out-of-fold table; see the class
        docstring). Prompt embeddings are stored as base64 float32: they are
        J times the size of the regression and decimal lists would bloat the
        file; the regression is stored as plain float lists."""
        if not self._fitted:
            raise RuntimeError("fit first")
        lr = None
        if self._lr is not None:
            lr = {
                "classes": np.asarray(self._lr["classes"]).tolist(),
                "coef": np.asarray(self._lr["coef"]).tolist(),
                "intercept": np.asarray(self._lr["intercept"]).tolist(),
            }
        prompts = None
        if self._prompt_emb is not None:
            prompts = {
                "embeddings": _b64_f32(self._prompt_emb),
                "class_of_prompt": self._class_of_prompt.tolist(),
            }
        return {
            "method": self.name,
            "version": self.params_version,
            "settings": self.settings(),
            "n_fit": self._n_fit,
            "prompts": prompts,
            "lr": lr,
            "gmm": self._gmms,
            "fallback": {
                "estimator": self.estimators[0],
                "thresholds": {str(c): t for c, t in sorted(self._fallback.items())},
            },
            "fit_selected_per_class": self._fit_selected,
        }

    @classmethod
    def from_params(
        cls, params: dict, oof: dict[str, np.ndarray] | None = None
    ) -> CLIPCleanerScorer:
        """Rebuild a fitted scorer from :meth:`get_params` output (and, for
        ``induced='oof'``, the saved :attr:`oof_` table)."""
        if params.get("method") != cls.name or params.get("version") != cls.params_version:
            raise ValueError(
                f"not {cls.name} v{cls.params_version} params: "
                f"{params.get('method')} v{params.get('version')}"
            )
        self = cls(**params["settings"])
        prompts = params["prompts"]
        self._prompt_emb = self._class_of_prompt = None
        if prompts is not None:
            self._prompt_emb = _from_b64_f32(prompts["embeddings"])
            self._class_of_prompt = np.asarray(prompts["class_of_prompt"], dtype=np.int64)
        self._lr = None
        if params["lr"] is not None:
            self._lr = {
                "classes": np.asarray(params["lr"]["classes"], dtype=np.int64),
                "coef": np.asarray(params["lr"]["coef"], dtype=np.float64),
                "intercept": np.asarray(params["lr"]["intercept"], dtype=np.float64),
            }
        self._gmms = {e: list(g) for e, g in params["gmm"].items()}
        self._fallback = {int(c): float(t) for c, t in params["fallback"]["thresholds"].items()}
        self._n_fit = int(params["n_fit"])
        self._fit_selected = list(params["fit_selected_per_class"])
        if oof is not None:
            missing = set(OOF_FIELDS) - set(oof)
            if missing:
                raise ValueError(f"oof table lacks {sorted(missing)}")
            self.oof_ = {f: np.asarray(oof[f]) for f in OOF_FIELDS}
        self._fitted = True
        return self

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
``cleanlab.filter``. They live in the sibling modules (:mod:`.zeroshot`,
:mod:`.induced`, :mod:`.selectors`, :mod:`.labels`, :mod:`.params`) and are
re-exported here, the module callers import them from. This module holds
:class:`CLIPCleanerScorer`, which wraps them in the scorer contract of
:mod:`cleaner.methods.base` (fit global statistics once, then transform
shard by shard).

Conventions shared by every function here: ``labels`` are int arrays with
``-1`` for a missing/invalid label; such rows never enter a fit and get
``False`` / NaN / ``-1`` outputs. Probabilities are float64 arrays of shape
(n, K); scores derived from them are computed in log space.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cleaner.methods.base import Pairs
from cleaner.methods.clipcleaner.induced import (
    OOF_FIELDS,
    _lr_log_probs,
    induced_log_probs,
    oof_table,
    use_oof_table,
)
from cleaner.methods.clipcleaner.labels import _check_labels, stratified_sample
from cleaner.methods.clipcleaner.logprob import _label_stats
from cleaner.methods.clipcleaner.params import (
    ESTIMATORS,
    SELECTORS,
    _from_b64_f32,  # noqa: F401  (benchmarks/bench_detection.py imports it from here)
    check_settings,
    checked_oof,
    lr_from_json,
    lr_to_json,
    prompts_from_json,
    prompts_to_json,
)
from cleaner.methods.clipcleaner.selectors import (
    LOG_P_FLOOR,
    MIN_GMM_SAMPLES,
    _apply_fallback,
    _consistency_from_logs,
    consistency_select,
    fallback_thresholds,
    fit_class_gmms,
    gmm_clean_prob,
    gmm_posterior,
    gmm_score,
    gmm_select,
    label_quality,
)
from cleaner.methods.clipcleaner.zeroshot import zero_shot_log_probs, zero_shot_probs

__all__ = [
    "ESTIMATORS",
    "LOG_P_FLOOR",
    "MIN_GMM_SAMPLES",
    "OOF_FIELDS",
    "SELECTORS",
    "CLIPCleanerScorer",
    "consistency_select",
    "fallback_thresholds",
    "fit_class_gmms",
    "gmm_clean_prob",
    "gmm_posterior",
    "gmm_score",
    "gmm_select",
    "induced_log_probs",
    "label_quality",
    "stratified_sample",
    "zero_shot_log_probs",
    "zero_shot_probs",
]


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
        check_settings(self)
        self.oof_: dict[str, np.ndarray] | None = None
        self._fitted = False

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
                self.oof_ = oof_table(row_ids, y, stats["ind"])
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
                use_oof_table(stats["ind"], labels, np.asarray(pairs.row_ids), table)
        return self._columns(stats, labels)

    # -- persistence ---------------------------------------------------------

    def get_params(self) -> dict:
        """JSON-able fitted state (not the out-of-fold table; see the class
        docstring). Prompt embeddings are stored as base64 float32, the
        regression as plain float lists (see :mod:`.params`)."""
        if not self._fitted:
            raise RuntimeError("fit first")
        return {
            "method": self.name,
            "version": self.params_version,
            "settings": self.settings(),
            "n_fit": self._n_fit,
            "prompts": prompts_to_json(self._prompt_emb, self._class_of_prompt),
            "lr": lr_to_json(self._lr),
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
        self._prompt_emb, self._class_of_prompt = prompts_from_json(params["prompts"])
        self._lr = lr_from_json(params["lr"])
        self._gmms = {e: list(g) for e, g in params["gmm"].items()}
        self._fallback = {int(c): float(t) for c, t in params["fallback"]["thresholds"].items()}
        self._n_fit = int(params["n_fit"])
        self._fit_selected = list(params["fit_selected_per_class"])
        if oof is not None:
            self.oof_ = checked_oof(oof)
        self._fitted = True
        return self

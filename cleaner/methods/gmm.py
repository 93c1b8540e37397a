"""One-dimensional two-component Gaussian mixtures, fitted once and replayed.

SDD (on ``100 * cosine``) and SPS (on min-max normalised per-sample losses)
both split a 1-D score into a "clean" and a "noisy" mode with the same
released settings: ``GaussianMixture(n_components=2, max_iter=10, tol=1e-2,
reg_covar=5e-4)``.

The fit runs once (on all rows, or on a seeded sample) with scikit-learn;
the posterior is then recomputed here in numpy from the stored, JSON-able
parameters. That way a per-shard transform needs no pickled sklearn object,
and a resumed job reproduces the same posteriors from the same parameters.

The fit sees its values *sorted*: sklearn's k-means initialisation draws
its starting points by position, so the same values in another order could
land on another solution (at small N that flipped which rows SPS calls
reliable). Sorted, the fit depends only on the values, never on the order
of the rows they came from.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import numpy as np

# The released SDD / NPC / SPS settings; they are deliberately loose (10 EM
# steps), so sklearn's ConvergenceWarning is expected and recorded instead.
RELEASED_MAX_ITER = 10
RELEASED_TOL = 1e-2
RELEASED_REG_COVAR = 5e-4


def _as_column(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size < 2:
        raise ValueError(f"a two-component mixture needs at least 2 values, got {x.size}")
    if not np.all(np.isfinite(x)):
        raise ValueError("scores contain NaN or infinite values")
    return x.reshape(-1, 1)


def fit_gmm_1d(
    x: np.ndarray,
    *,
    max_iter: int = RELEASED_MAX_ITER,
    tol: float = RELEASED_TOL,
    reg_covar: float = RELEASED_REG_COVAR,
    random_state: int | None = 0,
) -> dict:
    """Fit a two-component 1-D Gaussian mixture and return its parameters.

    Parameters
    ----------
    x : np.ndarray
        1-D array of finite scores, at least 2 of them. The scale matters:
        ``reg_covar`` is added to each variance, so it is not scale-free.
    max_iter : int, default=10
        Maximum number of EM iterations (the released setting).
    tol : float, default=1e-2
        EM convergence threshold on the lower-bound gain (released setting).
    reg_covar : float, default=5e-4
        Non-negative regularisation added to each variance (released setting).
    random_state : int or None, default=0
        Seed of sklearn's k-means initialisation. The released code passes
        none; we fix it so that a job is reproducible.

    Returns
    -------
    params : dict
        JSON-able parameters, components in sklearn's order:

        - ``weights``: list of 2 mixing weights,
        - ``means``: list of 2 component means,
        - ``variances``: list of 2 component variances (``reg_covar`` included),
        - ``converged``: whether EM met ``tol`` within ``max_iter`` steps,
        - ``n_iter``: number of EM steps run,
        - ``n_fit``: number of values fitted,
        - ``settings``: the ``max_iter``, ``tol``, ``reg_covar`` and
          ``random_state`` used.
    """
    col = np.sort(_as_column(x), axis=0)  # order-free: see the module doc
    gmm = _fit_sklearn(col, max_iter, tol, reg_covar, random_state)
    return {
        "weights": [float(w) for w in gmm.weights_.reshape(-1)],
        "means": [float(m) for m in gmm.means_.reshape(-1)],
        "variances": [float(v) for v in gmm.covariances_.reshape(-1)],
        "converged": bool(gmm.converged_),
        "n_iter": int(gmm.n_iter_),
        "n_fit": int(col.shape[0]),
        "settings": {
            "max_iter": int(max_iter),
            "tol": float(tol),
            "reg_covar": float(reg_covar),
            "random_state": random_state,
        },
    }


def _fit_sklearn(
    col: np.ndarray, max_iter: int, tol: float, reg_covar: float, random_state: int | None
):
    """sklearn's two-component ``GaussianMixture`` fitted on ``col`` (n, 1).

    sklearn is imported here, not at module level, so that replaying stored
    parameters (:func:`gmm_posterior`) never loads it.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    gmm = GaussianMixture(
        n_components=2,
        max_iter=max_iter,
        tol=tol,
        reg_covar=reg_covar,
        random_state=random_state,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gmm.fit(col)
    return gmm


def component_index(params: dict, component: Literal["high", "low"]) -> int:
    """Index of the component with the higher (``'high'``) or lower mean."""
    means = np.asarray(params["means"], dtype=np.float64)
    if component == "high":
        return int(np.argmax(means))
    if component == "low":
        return int(np.argmin(means))
    raise ValueError(f"component must be 'high' or 'low', got {component!r}")


def gmm_posterior(
    x: np.ndarray,
    params: dict,
    component: Literal["high", "low"] = "high",
) -> np.ndarray:
    """Posterior probability of one mixture component, computed in numpy.

    Parameters
    ----------
    x : np.ndarray
        1-D array of scores on the scale the mixture was fitted on.
    params : dict
        The output of :func:`fit_gmm_1d` (only ``weights``, ``means`` and
        ``variances`` are read).
    component : {'high', 'low'}, default='high'
        Which component's posterior to return: the one with the higher mean
        (SDD: matched pairs have high cosine) or the lower mean (SPS: clean
        pairs have low loss).

    Returns
    -------
    posterior : np.ndarray
        float32 array of the same length as ``x``, values in [0, 1]. Matches
        ``GaussianMixture.predict_proba`` to float32 precision.
    """
    idx = component_index(params, component)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    w = np.asarray(params["weights"], dtype=np.float64)
    mu = np.asarray(params["means"], dtype=np.float64)
    var = np.asarray(params["variances"], dtype=np.float64)
    # log w_k + log N(x; mu_k, var_k), normalised with log-sum-exp so that a
    # point far in one tail does not underflow both components to 0/0.
    log_joint = (
        np.log(w)[None, :]
        - 0.5 * (math.log(2.0 * math.pi) + np.log(var)[None, :])
        - 0.5 * (x[:, None] - mu[None, :]) ** 2 / var[None, :]
    )
    log_norm = np.logaddexp(log_joint[:, 0], log_joint[:, 1])
    return np.exp(log_joint[:, idx] - log_norm).astype(np.float32)

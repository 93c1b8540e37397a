"""OSA: one-step anti-noise weights (METHODS.md section 1).

With d = s(x, y) - beta in cosine units, the paper's weight is

    w = d^2 * (1 - d)   if d > 0,   else 0,

a cubic that peaks at d = 2/3 with value 4/27. ``osa_weight`` keeps it as
is; ``osa_weight_norm`` = w / (4/27) lies in [0, 1].

The cubic is meant for beta >= 0, where d <= 1 - beta <= 1. An estimator
whose noise beta is negative (seen with the shapes-world estimator) would
give pairs with d > 1 -- the *best* matches -- a negative weight, which a
trainer would turn into pushing matched pairs apart. We clamp the weight at
0 (as :func:`cleaner.methods.osa.loss.osa_weight_paper` does) and the pipeline warns
when beta < 0; ``cosine`` is always there for a rule of your own. The released code's
per-batch form (d divided by the batch's largest d) is a training-time
choice and lives in :mod:`cleaner.methods.osa.loss`, not here: a sample's offline
score must not depend on its batch.

Forms (``form``): ``paper`` is the cubic above (clamped at 0). ``monotone``
(what ``--thresholds auto`` writes) follows the cubic up to its peak at
d = 2/3 and holds it there, w = 4/27 for d >= 2/3: the weight never falls as
the cosine rises, so no pair is weighted below a noisier one, and
``osa_weight > 0`` is exactly ``cosine > beta`` whatever beta is. On CLIP,
where d stays below 2/3, the two forms give the same weights.
"""

from __future__ import annotations

import numpy as np

from cleaner.methods.base import Pairs
from cleaner.methods.beta import BetaEstimate, shuffled_beta

OSA_PEAK = 4.0 / 27.0
PEAK_D = 2.0 / 3.0
FORMS = ("paper", "monotone")


def osa_weight(cosine: np.ndarray, beta: float, form: str = "paper") -> np.ndarray:
    """OSA's weight for each cosine (``form`` above). float32, 0 where cosine <= beta.

    Examples
    --------
    >>> osa_weight(np.array([0.2, 0.2 + 2 / 3]), beta=0.2).astype(float).round(4).tolist()
    [0.0, 0.1481]
    >>> osa_weight(np.array([0.5, 0.9]), beta=-0.1).astype(float).round(4).tolist()
    [0.144, 0.0]
    >>> w = osa_weight(np.array([0.5, 0.9]), beta=-0.1, form="monotone")
    >>> w.astype(float).round(4).tolist()
    [0.144, 0.1481]
    """
    if form not in FORMS:
        raise ValueError(f"OSA weight form must be one of {FORMS}, not {form!r}")
    d = np.asarray(cosine, dtype=np.float64) - float(beta)
    if form == "monotone":
        d = np.minimum(d, PEAK_D)  # flat at the peak: non-decreasing in the cosine
    w = np.where(d > 0, d * d * (1.0 - d), 0.0)
    return np.maximum(w, 0.0).astype(np.float32)  # d > 1 (beta < 0): 0, never negative


class OSAScorer:
    """Fit/transform wrapper: ``fit`` sets beta, ``transform`` weighs pairs.

    Parameters
    ----------
    beta : the boundary in cosine units, or a :class:`BetaEstimate`. When
        None, ``fit`` estimates it from shuffled (mismatched) pairs of the
        data it is given -- the ``shuffled`` source; the ``noise`` source
        needs the model and is estimated by :func:`cleaner.methods.beta.noise_beta`.
    n_shuffled, seed : K and the seed for the shuffled estimate.
    form : ``paper`` (the cubic) or ``monotone`` (held at its peak past d = 2/3).
    """

    name = "osa"

    def __init__(
        self,
        beta: float | BetaEstimate | None = None,
        n_shuffled: int = 10_000,
        seed: int = 0,
        form: str = "paper",
    ):
        if form not in FORMS:
            raise ValueError(f"OSA weight form must be one of {FORMS}, not {form!r}")
        self.beta = BetaEstimate.manual(beta) if isinstance(beta, (int, float)) else beta
        self.n_shuffled = n_shuffled
        self.seed = seed
        self.form = form

    def fit(self, pairs: Pairs | None = None) -> OSAScorer:
        if self.beta is None:
            if pairs is None or len(pairs) < 2:
                raise ValueError("OSA needs beta, or at least two pairs to estimate it from")
            self.beta = shuffled_beta(pairs.image, pairs.text, self.n_shuffled, self.seed)
        return self

    def get_params(self) -> dict:
        return {"beta": self.beta.to_dict() if self.beta else None, "form": self.form}

    @classmethod
    def from_params(cls, params: dict) -> OSAScorer:
        # sidecars from before the form existed were scored with the paper's cubic
        return cls(beta=BetaEstimate(**params["beta"]), form=params.get("form", "paper"))

    def transform(self, pairs: Pairs) -> dict[str, np.ndarray]:
        if self.beta is None:
            raise RuntimeError("OSAScorer.transform called before fit")
        w = osa_weight(pairs.cosine, self.beta.value, self.form)
        return {
            "cosine": pairs.cosine.astype(np.float32),
            "osa_weight": w,
            "osa_weight_norm": (w / OSA_PEAK).astype(np.float32),
        }

"""OSA's training side (METHODS §1.2, §1.3): the anti-noise weight and the weighted loss.

The offline scorer (:mod:`cleaner.methods.osa.scorer`) writes each pair's
cosine and the boundary beta; this module turns them into the weight and
loss a trainer uses, in torch. It is separate from the scorer because it
needs torch and the training batch, while the scorer stays numpy-only and
batch-independent. Conventions: :mod:`cleaner.methods.losses`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cleaner.methods.contrastive import as_float_tensor, check_per_sample

#: Peak of the paper's scoring function d^2 (1 - d), reached at d = 2/3.
OSA_PEAK = 4.0 / 27.0
#: ``paper``: the published curve; ``monotone``: held at its peak beyond it
#: (what ``--thresholds auto`` scores with; the sidecar's params["osa"]["form"]).
FORMS = ("paper", "monotone")


def _check_form(form: str) -> None:
    if form not in FORMS:
        raise ValueError(f"OSA weight form must be one of {FORMS}, not {form!r}")


def osa_weight_paper(
    cosine: Tensor, beta: float | Tensor, normalize: bool = False, form: str = "paper"
) -> Tensor:
    """OSA's per-sample anti-noise weight, the paper's form (METHODS §1.2).

    With d = s - beta (cosine units, s the estimator's cosine of the pair):

        w = d^2 (1 - d)   if d > 0
        w = 0             if d <= 0

    The cubic peaks at d = 2/3 with value 4/27 (``OSA_PEAK``); with
    ``normalize=True`` the weight is divided by 4/27 (the sidecar's
    ``osa_weight_norm``), so the peak is 1.

    METHODS.md is silent on d > 1 (only reachable when beta < 0, since
    s <= 1): the cubic would turn negative there and a negative weight would
    turn the loss into gradient *ascent* on the most confident pairs, so the
    weight is clamped at 0. ``form="monotone"`` takes d = min(d, 2/3) instead:
    the weight stays at the peak past it and never falls as s rises, as
    :func:`cleaner.methods.osa.scorer.osa_weight` computes it offline.
    """
    _check_form(form)
    s = as_float_tensor(cosine)
    d = s - as_float_tensor(beta, like=s)
    if form == "monotone":
        d = d.clamp_max(2.0 / 3.0)
    w = torch.where(d > 0, d * d * (1 - d), torch.zeros_like(d))
    w = w.clamp_min(0)
    if normalize:
        w = w / OSA_PEAK
    return w


def osa_weight_code(cosine: Tensor, beta: float | Tensor, form: str = "paper") -> Tensor:
    """OSA's weight in the released code's per-batch form (METHODS §1.2).

    With d = s - beta over the *training batch* and m = max(d):

        x = d / m,   w = x^2 (1 - x^2)   for d > 0
        w = 0                            for d <= 0

    The peak is 0.25 at x = 1/sqrt(2), and the batch's best pair always gets
    weight 0 (x = 1). A sample's weight depends on its batch, so this is a
    training-time option only, never an offline score.

    Choices where METHODS.md is silent:

    - Samples with d <= 0 get 0, as in the paper's form (otherwise
      x in (-1, 0) would give below-boundary pairs a positive weight).
    - Guard: a batch whose max d is <= 0 (every pair on or below the
      boundary) gets weight 0 for every sample; the released code divides
      by zero (or by a negative max) there.
    - ``form="monotone"``: x = min(x, 1/sqrt(2)), so the weight is held at
      its peak 0.25 and the batch's best pairs are no longer weighted down.
    """
    _check_form(form)
    s = as_float_tensor(cosine)
    d = s - as_float_tensor(beta, like=s)
    if d.numel() == 0:
        return torch.zeros_like(d)
    m = d.max()
    if not bool(m > 0):
        return torch.zeros_like(d)
    x = d / m
    if form == "monotone":
        x = x.clamp_max(2.0**-0.5)
    w = x * x * (1 - x * x)
    return torch.where(d > 0, w, torch.zeros_like(w))


def osa_loss(per_sample_loss: Tensor, weights: Tensor) -> Tensor:
    """OSA's training loss (METHODS §1.3): ``mean_i(w_i * loss_i)``.

    ``per_sample_loss`` is the target model's per-sample InfoNCE with both
    directions weighted alike (e.g.
    :func:`cleaner.methods.contrastive.symmetric_infonce`). The mean is over
    the batch size, not the sum of weights, as in the released code; the
    weights are detached (they are the estimator's, not the model's).
    """
    n = per_sample_loss.shape[0]
    w = as_float_tensor(weights, like=per_sample_loss).detach()
    check_per_sample("weights", w, n)
    return (w * per_sample_loss).mean()

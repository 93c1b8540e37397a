"""Gathers each method's training loss for the trainer, in pure torch.

The offline scorers write per-sample verdicts; a thin trainer then needs the
losses and weights that turn those verdicts into a training signal. Each
method keeps its training-side math next to its scorer
(``cleaner.methods.<method>.loss``), the shared per-sample InfoNCE lives in
:mod:`cleaner.methods.contrastive`; this module re-exports them all so the
trainer (and its tests) import one name, ``losses``. Every function is a pure
function of tensors (plus, for SDD's significance weight, one throw-away
optimisation step on a copy of the model): no I/O, no data loading, no
training loop.

Conventions shared by all functions:

- Embeddings are (n, d) tensors, row i of the image batch matching row i of
  the text batch. They are L2-normalised inside, so raw encoder outputs are
  fine.
- ``logit_scale`` is the *multiplier* of the cosine similarities, already
  exponentiated: open_clip's ``model.logit_scale.exp()`` (about 100 for a
  trained CLIP), or ``1 / 0.07`` for SPS's temperature. A float or a 0-d
  tensor (which may require grad).
- Per-sample weights (OSA's w, SDD's w_con / w_sig, SPS's soft labels) are
  treated as constants: they are detached, so gradients flow only through the
  per-sample losses they multiply.
- Batch means divide by the batch size, never by the sum of weights, as the
  released codes of OSA, SDD and SPS do. A weight-0 sample therefore adds
  nothing to the gradient through its own loss term; it still acts as a
  negative for the other samples of the batch, which is inherent to a
  batch-contrastive loss.

Sections of METHODS.md are cited as "METHODS §n".
"""

from __future__ import annotations

from cleaner.methods.clipcleaner.loss import (
    MIXFIX_ABSORB,
    MIXFIX_DROP,
    MIXFIX_RELABEL,
    MIXFIX_SELECTED,
    MIXFIX_SELECTED_RELABEL,
    class_balanced_weights,
    mixfix_decisions,
    mixup,
    mixup_cross_entropy,
)
from cleaner.methods.contrastive import open_clip_encode, per_sample_infonce, symmetric_infonce
from cleaner.methods.osa.loss import OSA_PEAK, osa_loss, osa_weight_code, osa_weight_paper
from cleaner.methods.sdd.loss import sdd_loss, siamese_significance, significance_weights
from cleaner.methods.sps.loss import (
    SPS_LAMBDA1,
    SPS_LAMBDA2,
    cross_modal_consistency,
    metric_consistency,
    proxy_loss,
    soft_label_loss,
    sps_match_probability,
    sps_proxy_labels,
    sps_quasi_clean_labels,
    sps_total,
)

__all__ = [
    "OSA_PEAK",
    "SPS_LAMBDA1",
    "SPS_LAMBDA2",
    "MIXFIX_DROP",
    "MIXFIX_SELECTED",
    "MIXFIX_ABSORB",
    "MIXFIX_RELABEL",
    "MIXFIX_SELECTED_RELABEL",
    "per_sample_infonce",
    "symmetric_infonce",
    "osa_weight_paper",
    "osa_weight_code",
    "osa_loss",
    "significance_weights",
    "siamese_significance",
    "open_clip_encode",
    "sdd_loss",
    "sps_match_probability",
    "sps_quasi_clean_labels",
    "sps_proxy_labels",
    "soft_label_loss",
    "proxy_loss",
    "cross_modal_consistency",
    "metric_consistency",
    "sps_total",
    "mixfix_decisions",
    "mixup",
    "mixup_cross_entropy",
    "class_balanced_weights",
]

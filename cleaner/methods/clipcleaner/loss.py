"""CLIPCleaner's training side, MixFix (METHODS §3.5): relabelling, mixup, class balance.

The offline scorer (:mod:`cleaner.methods.clipcleaner.scorer`) writes the
selection; each epoch MixFix then absorbs or relabels the unselected samples
from the model's own predictions and trains on mixed-up batches drawn
class-balanced. That needs the model being trained, so it lives here, in
torch, apart from the scorer. Conventions: :mod:`cleaner.methods.losses`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from cleaner.methods.contrastive import as_float_tensor, check_per_sample

#: Decision codes of :func:`mixfix_decisions`.
MIXFIX_DROP = 0  # not selected, not confident enough: left out this epoch
MIXFIX_SELECTED = 1  # selected by CLIPCleaner: kept with its given label
MIXFIX_ABSORB = 2  # not selected, prediction agrees, conf >= theta_r: kept, own label
MIXFIX_RELABEL = 3  # not selected, prediction disagrees, conf >= theta_r2: kept, predicted label
MIXFIX_SELECTED_RELABEL = 4  # selected and relabelled (only with relabel_selected=True)


def mixfix_decisions(
    probs: Tensor,
    given_labels: Tensor,
    selected: Tensor,
    theta_r: float = 0.8,
    theta_r2: float = 0.8,
    *,
    relabel_selected: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """MixFix's per-epoch update of the training set (METHODS §3.5).

    ``probs`` (n, K) are the model's class probabilities after the epoch,
    ``given_labels`` (n,) the dataset's original (noisy) labels -- pass the
    originals every epoch, not the previous epoch's ``new_labels``, as the
    released code does -- and ``selected`` (n,) the CLIPCleaner selection.
    With conf = max_k probs, pred = argmax_k probs, for a non-selected i:

    - absorb (code 2):  pred == y_i and conf >= theta_r  -> kept, label y_i
    - relabel (code 3): pred != y_i and conf >= theta_r2 -> kept, label pred
    - drop (code 0):    otherwise                        -> not used
    - selected samples (code 1) are always kept with their given label.

    Released defaults theta_r = theta_r2 = 0.8; theta_r <= theta_r2 is
    required. The released code also relabels *selected* samples whose
    prediction disagrees with conf >= theta_r2; ``relabel_selected=True``
    reproduces that (code 4). Returns ``(new_labels, use_mask, decision)``:
    int64 labels, a bool mask of the samples to train on, int8 codes.
    """
    if theta_r > theta_r2:
        raise ValueError(f"theta_r ({theta_r}) must be <= theta_r2 ({theta_r2})")
    p = as_float_tensor(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must be (n, K), got {tuple(p.shape)}")
    n = p.shape[0]
    y = torch.as_tensor(given_labels, device=p.device).long()
    sel = torch.as_tensor(selected, device=p.device).bool()
    check_per_sample("given_labels", y, n)
    check_per_sample("selected", sel, n)

    conf, pred = p.max(dim=1)
    agree = pred == y
    absorb = ~sel & agree & (conf >= theta_r)
    relabel = ~sel & ~agree & (conf >= theta_r2)

    decision = torch.full((n,), MIXFIX_DROP, dtype=torch.int8, device=p.device)
    decision[sel] = MIXFIX_SELECTED
    decision[absorb] = MIXFIX_ABSORB
    decision[relabel] = MIXFIX_RELABEL
    new_labels = y.clone()
    new_labels[relabel] = pred[relabel]
    if relabel_selected:
        sel_relabel = sel & ~agree & (conf >= theta_r2)
        decision[sel_relabel] = MIXFIX_SELECTED_RELABEL
        new_labels[sel_relabel] = pred[sel_relabel]
    use_mask = decision != MIXFIX_DROP
    return new_labels, use_mask, decision


def _sample_gamma(shape: float, generator: torch.Generator | None) -> float:
    """One Gamma(shape, 1) draw from ``generator`` (Marsaglia-Tsang).

    ``torch.distributions`` takes no generator; this keeps mixup's lambda
    reproducible from the same generator as its permutation.
    """
    if shape < 1:
        # Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = torch.rand((), generator=generator).item()
        return _sample_gamma(shape + 1, generator) * u ** (1.0 / shape)
    d = shape - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    while True:
        x = torch.randn((), generator=generator).item()
        v = (1.0 + c * x) ** 3
        if v <= 0:
            continue
        u = torch.rand((), generator=generator).item()
        if u > 0 and math.log(u) < 0.5 * x * x + d - d * v + d * math.log(v):
            return d * v


def mixup(
    x: Tensor,
    y_onehot: Tensor,
    alpha: float = 1.0,
    generator: torch.Generator | None = None,
    *,
    lam: float | None = None,
) -> tuple[Tensor, Tensor, float]:
    """Mixup as in CLIPCleaner's released training loop (METHODS §3.5).

        lam ~ Beta(alpha, alpha),  lam = max(lam, 1 - lam)
        perm = a random permutation of the batch
        x_mix = lam * x + (1 - lam) * x[perm]
        y_mix = lam * y + (1 - lam) * y[perm]

    ``max(lam, 1 - lam)`` keeps each mixed sample closer to its own input.
    ``lam`` overrides the draw (``lam=1`` is plain training); ``alpha <= 0``
    means no mixing (lam = 1). The permutation (on ``x``'s device when that
    matches the generator, else on CPU) and the Beta draw both come from
    ``generator``. Returns ``(x_mix, y_mix, lam)``.
    """
    if y_onehot.ndim != 2 or y_onehot.shape[0] != x.shape[0]:
        raise ValueError("y_onehot must be (n, K) with n = len(x)")
    n = x.shape[0]
    if lam is None:
        if alpha <= 0:
            lam = 1.0
        else:
            g1 = _sample_gamma(alpha, generator)
            g2 = _sample_gamma(alpha, generator)
            # both draws can underflow to 0 for a tiny alpha, where Beta
            # mass sits at {0, 1} anyway: take 1 (no mixing).
            lam = g1 / (g1 + g2) if g1 + g2 > 0 else 1.0
        lam = max(lam, 1.0 - lam)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gen_device).to(x.device)
    y = y_onehot.to(x.dtype) if x.is_floating_point() else y_onehot.float()
    x_mix = lam * x + (1.0 - lam) * x[perm]
    y_mix = lam * y + (1.0 - lam) * y[perm]
    return x_mix, y_mix, float(lam)


def mixup_cross_entropy(logits: Tensor, y_mix: Tensor) -> Tensor:
    """Cross-entropy against a (mixed) target distribution:
    ``-mean_i sum_k y_mix[i, k] * log_softmax(logits)[i, k]`` (the released
    MixFix loss; equals ``F.cross_entropy`` for one-hot targets)."""
    if logits.shape != y_mix.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and y_mix {tuple(y_mix.shape)} differ")
    return -(y_mix.to(logits.dtype) * logits.log_softmax(dim=1)).sum(dim=1).mean()


def class_balanced_weights(labels: Tensor, n_classes: int) -> Tensor:
    """Per-sample weights for ``torch.utils.data.WeightedRandomSampler`` that
    draw every present class equally often (METHODS §3.5):

        w_i = 1 / count(labels == labels_i)

    so each class present sums to 1. Float64, as the sampler expects.
    Labels outside [0, n_classes) raise.
    """
    y = torch.as_tensor(labels).long().reshape(-1)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes})")
    counts = torch.bincount(y, minlength=n_classes).double()
    return 1.0 / counts[y]

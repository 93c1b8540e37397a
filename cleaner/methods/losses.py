"""Training-side math of the four methods in METHODS.md, in pure torch.

The offline scorers write per-sample verdicts; a thin trainer then needs the
losses and weights that turn those verdicts into a training signal. Every
function here is a pure function of tensors (plus, for SDD's significance
weight, one throw-away optimisation step on a copy of the model): no I/O, no
data loading, no training loop.

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

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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

# --------------------------------------------------------------------------
# Shared: the CLIP symmetric InfoNCE, per sample
# --------------------------------------------------------------------------


def _as_float_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """A float tensor view of ``x`` (tensor, array, list or scalar)."""
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.float()
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def _check_pair(img: Tensor, txt: Tensor) -> None:
    if img.ndim != 2 or txt.ndim != 2 or img.shape != txt.shape:
        raise ValueError(
            f"expected two (n, d) embedding batches of the same shape, got "
            f"{tuple(img.shape)} and {tuple(txt.shape)}"
        )


def _check_per_sample(name: str, value: Tensor, n: int) -> None:
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(value.shape)}")


def _logits(img: Tensor, txt: Tensor, logit_scale: float | Tensor) -> Tensor:
    """logit_scale * cos(I_i, T_j), an (n, n) matrix; rows are images."""
    _check_pair(img, txt)
    img = F.normalize(img, dim=-1)
    txt = F.normalize(txt, dim=-1)
    return logit_scale * img @ txt.t()


def per_sample_infonce(
    img: Tensor, txt: Tensor, logit_scale: float | Tensor
) -> tuple[Tensor, Tensor]:
    """Per-sample cross-entropies of the CLIP symmetric InfoNCE.

    With L = logit_scale * cos(I_i, T_j) (rows images, columns texts):

        l_i2t[i] = -log softmax_j(L[i, :])[i]      (image i retrieves its text)
        l_t2i[i] = -log softmax_j(L[:, i])[i]      (text i retrieves its image)

    CLIP's loss is ``((l_i2t + l_t2i) / 2).mean()``; the per-sample form is
    what OSA (METHODS §1.3), SDD (§2.4, §2.5) and SPS (§4.1, §4.5) weight.
    Returns ``(l_i2t, l_t2i)``, each of shape (n,).
    """
    logits = _logits(img, txt, logit_scale)
    target = torch.arange(logits.shape[0], device=logits.device)
    l_i2t = F.cross_entropy(logits, target, reduction="none")
    l_t2i = F.cross_entropy(logits.t(), target, reduction="none")
    return l_i2t, l_t2i


def symmetric_infonce(img: Tensor, txt: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Per-sample symmetric InfoNCE, ``(l_i2t + l_t2i) / 2``, shape (n,)."""
    l_i2t, l_t2i = per_sample_infonce(img, txt, logit_scale)
    return (l_i2t + l_t2i) / 2


# --------------------------------------------------------------------------
# OSA (METHODS §1)
# --------------------------------------------------------------------------

#: Peak of the paper's scoring function d^2 (1 - d), reached at d = 2/3.
OSA_PEAK = 4.0 / 27.0


def osa_weight_paper(cosine: Tensor, beta: float | Tensor, normalize: bool = False) -> Tensor:
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
    weight is clamped at 0.
    """
    s = _as_float_tensor(cosine)
    d = s - _as_float_tensor(beta, like=s)
    w = torch.where(d > 0, d * d * (1 - d), torch.zeros_like(d))
    w = w.clamp_min(0)
    if normalize:
        w = w / OSA_PEAK
    return w


def osa_weight_code(cosine: Tensor, beta: float | Tensor) -> Tensor:
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
    """
    s = _as_float_tensor(cosine)
    d = s - _as_float_tensor(beta, like=s)
    if d.numel() == 0:
        return torch.zeros_like(d)
    m = d.max()
    if not bool(m > 0):
        return torch.zeros_like(d)
    x = d / m
    w = x * x * (1 - x * x)
    return torch.where(d > 0, w, torch.zeros_like(w))


def osa_loss(per_sample_loss: Tensor, weights: Tensor) -> Tensor:
    """OSA's training loss (METHODS §1.3): ``mean_i(w_i * loss_i)``.

    ``per_sample_loss`` is the target model's per-sample InfoNCE with both
    directions weighted alike (e.g. :func:`symmetric_infonce`). The mean is
    over the batch size, not the sum of weights, as in the released code;
    the weights are detached (they are the estimator's, not the model's).
    """
    n = per_sample_loss.shape[0]
    w = _as_float_tensor(weights, like=per_sample_loss).detach()
    _check_per_sample("weights", w, n)
    return (w * per_sample_loss).mean()


# --------------------------------------------------------------------------
# SDD (METHODS §2)
# --------------------------------------------------------------------------


def _ratio(before: Tensor, after: Tensor) -> Tensor:
    """before / after with a guard for after == 0.

    A per-sample CE is > 0 in exact arithmetic but can underflow to 0. If the
    step drove the memory-bank loss to 0 from a positive value the step
    helped without bound: ratio +inf (so c >= 1 and w_sig = 1). If it was 0
    before and after, nothing changed: ratio 1. Never NaN, never a division
    by zero.
    """
    safe_after = torch.where(after > 0, after, torch.ones_like(after))
    r = before / safe_after
    r = torch.where(
        after > 0, r, torch.where(before > 0, torch.full_like(r, math.inf), r.new_ones(()))
    )
    return r


def significance_weights(
    loss_before_i2t: Tensor,
    loss_after_i2t: Tensor,
    loss_before_t2i: Tensor,
    loss_after_t2i: Tensor,
) -> Tensor:
    """SDD's significance weight from memory-bank losses (METHODS §2.4).

        c_i   = 0.5 * (b_i2t / a_i2t + b_t2i / a_t2i)
        w_sig = tanh(c_i)  if c_i < 1
        w_sig = 1          otherwise

    b = memory-bank loss before the siamese step, a = after. c_i >= 1 means
    the step on the batch lowered the clean neighbours' loss on average (the
    sample helps), c_i < 1 that it raised it. Note the jump at c = 1 from
    tanh(1) ~ 0.762 to 1, which is the published rule. A zero ``a`` is
    guarded (see :func:`_ratio`). Returned detached.
    """
    b1 = _as_float_tensor(loss_before_i2t).detach()
    a1 = _as_float_tensor(loss_after_i2t, like=b1).detach()
    b2 = _as_float_tensor(loss_before_t2i, like=b1).detach()
    a2 = _as_float_tensor(loss_after_t2i, like=b1).detach()
    if not (b1.shape == a1.shape == b2.shape == a2.shape):
        raise ValueError("the four memory-bank loss vectors must have the same shape")
    c = 0.5 * (_ratio(b1, a1) + _ratio(b2, a2))
    return torch.where(c < 1, torch.tanh(c), torch.ones_like(c))


EncodeFn = Callable[[nn.Module, Any, Any], tuple[Tensor, Tensor, Any]]


def open_clip_encode(
    model: nn.Module, images: Tensor, texts: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``encode_fn`` for an open_clip ``CLIP`` model (images preprocessed,
    texts tokenised): ``(encode_image, encode_text, logit_scale.exp())``."""
    return model.encode_image(images), model.encode_text(texts), model.logit_scale.exp()


def _memory_bank_losses(
    model: nn.Module,
    encode_fn: EncodeFn,
    mb_images: Any,
    mb_texts: Any,
    mb_t2i_images: Any,
    mb_t2i_texts: Any,
) -> tuple[Tensor, Tensor]:
    """(l_i2t, l_t2i) of the memory-bank pairs, without building a graph."""
    with torch.no_grad():
        img, txt, scale = encode_fn(model, mb_images, mb_texts)
        l_i2t, l_t2i = per_sample_infonce(img, txt, scale)
        if mb_t2i_images is not None:
            # SDD's second bank: the text-keyed neighbours form their own batch
            # and supply the t2i direction.
            img, txt, scale = encode_fn(model, mb_t2i_images, mb_t2i_texts)
            _, l_t2i = per_sample_infonce(img, txt, scale)
    return l_i2t.detach(), l_t2i.detach()


def siamese_significance(
    model: nn.Module,
    optimizer_factory: Callable[[nn.Module], torch.optim.Optimizer],
    batch_images: Any,
    batch_texts: Any,
    w_con: Tensor,
    mb_images: Any,
    mb_texts: Any,
    encode_fn: EncodeFn = open_clip_encode,
    *,
    mb_t2i_images: Any = None,
    mb_t2i_texts: Any = None,
    optimizer_state: dict | None = None,
    siamese: nn.Module | None = None,
) -> Tensor:
    """SDD's significance weight w_sig for one training batch (METHODS §2.4).

    1. Copy ``model`` into a siamese model (``copy.deepcopy``; or, if a
       persistent ``siamese`` module is passed, load ``model``'s state into
       it, which saves the allocation of a deep copy every step).
    2. Siamese per-sample i2t and t2i InfoNCE on the memory-bank pairs,
       which form their own batch (``mb_images[i]``, ``mb_texts[i]`` is the
       memory-bank pair of batch sample i).
    3. One optimisation step of the siamese model on the batch with loss
       ``mean_i(w_con[i] * (l_i2t[i] + l_t2i[i]) / 2)``.
    4. The memory-bank losses again, then :func:`significance_weights`.

    SDD stores two memory-bank pairs per sample (§2.3: image-keyed and
    text-keyed neighbours). Passing only ``mb_images``/``mb_texts`` uses one
    bank for both directions (NPC's form). Passing ``mb_t2i_images`` and
    ``mb_t2i_texts`` as well takes the i2t losses from the image-keyed batch
    (``mb_images``, ``mb_texts``) and the t2i losses from the text-keyed batch
    -- the direction whose query modality chose the neighbour. METHODS.md
    does not say how the two entries enter c_i; this is our reading.

    ``encode_fn(module, images, texts) -> (img_emb, txt_emb, logit_scale)``
    (``logit_scale`` already exponentiated); :func:`open_clip_encode` for
    open_clip models, anything for a stub. ``optimizer_factory(siamese)``
    builds the siamese's optimizer from the siamese *module* (so it can
    rebuild the trainer's param groups); ``optimizer_state`` (e.g. the main
    optimizer's ``state_dict()``) is deep-copied into it so that Adam's
    moments match the main model's -- deep-copied because
    ``Optimizer.load_state_dict`` may otherwise share tensors and the step
    would write into the main optimizer's state.

    Training/eval mode is inherited from ``model`` (the copy keeps it); no
    loss scaling is applied, so under fp16 autocast prefer bf16. The original
    model's parameters, buffers and ``.grad`` are never touched. Returns
    w_sig, shape (n,), detached.
    """
    if (mb_t2i_images is None) != (mb_t2i_texts is None):
        raise ValueError("pass both mb_t2i_images and mb_t2i_texts, or neither")
    if siamese is None:
        siamese = copy.deepcopy(model)
    else:
        siamese.load_state_dict(model.state_dict())
        siamese.train(model.training)
    # deepcopy copies .grad too; drop it so the step sees only this batch's
    # gradient (and no memory is spent on a stale copy).
    for p in siamese.parameters():
        p.grad = None

    before_i2t, before_t2i = _memory_bank_losses(
        siamese, encode_fn, mb_images, mb_texts, mb_t2i_images, mb_t2i_texts
    )

    optimizer = optimizer_factory(siamese)
    if optimizer_state is not None:
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
    optimizer.zero_grad(set_to_none=True)
    img, txt, scale = encode_fn(siamese, batch_images, batch_texts)
    per_sample = symmetric_infonce(img, txt, scale)
    w = _as_float_tensor(w_con, like=per_sample).to(per_sample.device).detach()
    _check_per_sample("w_con", w, per_sample.shape[0])
    (w * per_sample).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

    after_i2t, after_t2i = _memory_bank_losses(
        siamese, encode_fn, mb_images, mb_texts, mb_t2i_images, mb_t2i_texts
    )
    return significance_weights(before_i2t, after_i2t, before_t2i, after_t2i).detach()


def sdd_loss(per_sample_symmetric: Tensor, w_con: Tensor, w_sig: Tensor) -> Tensor:
    """SDD's training loss on D_p (METHODS §2.5).

        L = mean_i( w_con(i) * w_sig(i) * InfoNCE(i) ),

    InfoNCE(i) the symmetric per-sample loss ``(l_i2t + l_t2i) / 2`` of the
    kept pairs. Both weights are detached; the mean is over the batch size.
    """
    n = per_sample_symmetric.shape[0]
    wc = _as_float_tensor(w_con, like=per_sample_symmetric).detach()
    ws = _as_float_tensor(w_sig, like=per_sample_symmetric).detach()
    _check_per_sample("w_con", wc, n)
    _check_per_sample("w_sig", ws, n)
    return (wc * ws * per_sample_symmetric).mean()


# --------------------------------------------------------------------------
# SPS (METHODS §4)
# --------------------------------------------------------------------------

#: SPS's weights of L_cro and L_met in the released code.
SPS_LAMBDA1 = 25.0
SPS_LAMBDA2 = 25.0


def sps_match_probability(img: Tensor, txt: Tensor, logit_scale: float | Tensor) -> Tensor:
    """y_hat of METHODS §4.4: the mean of the pair's i2t and t2i matching
    probabilities, i.e. the diagonals of the row- and column-softmax of the
    batch's logit matrix, clamped to [0, 1]. Computed without a graph (it is
    a label, not a loss)."""
    with torch.no_grad():
        logits = _logits(img, txt, logit_scale)
        p_i2t = logits.softmax(dim=1).diagonal()
        p_t2i = logits.softmax(dim=0).diagonal()
        return ((p_i2t + p_t2i) / 2).clamp(0, 1)


def sps_quasi_clean_labels(clean_prob: Tensor, match_prob: Tensor) -> Tensor:
    """Quasi-clean soft label (METHODS §4.4): y_qc = p + (1 - p) * y_hat,
    p the GMM clean probability (``sps_clean_prob``), y_hat from
    :func:`sps_match_probability`."""
    y_hat = _as_float_tensor(match_prob).detach()
    p = _as_float_tensor(clean_prob, like=y_hat).to(y_hat.device).detach()
    return p + (1 - p) * y_hat


def sps_proxy_labels(match_prob: Tensor, image_cosine: Tensor, floor: float = 0.5) -> Tensor:
    """Proxy label, released-code form (METHODS §4.3).

        y_p = y_hat(noisy image, proxy caption) * cos(noisy image, proxy's image)
        y_p = 0 where y_p < floor (0.5)

    The paper's 1 / (gamma + exp(-b S)) has no published values and is not
    implemented.
    """
    y_hat = _as_float_tensor(match_prob).detach()
    cos = _as_float_tensor(image_cosine, like=y_hat).to(y_hat.device).detach()
    y = y_hat * cos
    return torch.where(y < floor, torch.zeros_like(y), y)


def soft_label_loss(
    img: Tensor,
    txt: Tensor,
    logit_scale: float | Tensor,
    soft_labels: Tensor,
    form: str = "code",
) -> Tensor:
    """SPS's loss for pairs with a soft label y in [0, 1] (METHODS §4.4, §4.5).

    ``form="code"`` (default; SPS's released ``InfoNCELoss``, mode "train"):
    the per-sample loss is scaled by the label,

        L = mean_i( y_i * (l_i2t[i] + l_t2i[i]) ),

    where the two directions are *summed* (SPS's L_i = CE(i2t) + CE(t2i),
    METHODS §4.1), i.e. twice CLIP's symmetric mean.

    ``form="target"``: cross-entropy against a soft target that puts y_i on
    the diagonal and spreads 1 - y_i evenly over the n - 1 other entries of
    the row (i2t) and of the column (t2i); summed over the directions and
    averaged over the batch. With y = 1 both forms equal the plain InfoNCE
    sum. The default follows the released code because that is what the
    published numbers were obtained with; note it can only down-weight a
    pair, while the target form also pushes a low-label pair apart.

    Use with temperature 0.07 (``logit_scale = 1 / 0.07``) to match SPS.
    """
    n = img.shape[0]
    y = _as_float_tensor(soft_labels, like=img).to(img.device).detach()
    _check_per_sample("soft_labels", y, n)
    if form == "code":
        l_i2t, l_t2i = per_sample_infonce(img, txt, logit_scale)
        return (y * (l_i2t + l_t2i)).mean()
    if form == "target":
        logits = _logits(img, txt, logit_scale)
        if n == 1:
            target = torch.ones_like(logits)
        else:
            off = ((1 - y) / (n - 1)).unsqueeze(1).expand(n, n)
            eye = torch.eye(n, dtype=torch.bool, device=logits.device)
            target = torch.where(eye, y.unsqueeze(1).expand(n, n), off)
        # row i of `target` is sample i's target, both for its row (i2t) and
        # for its column (t2i; logits.t() puts column i in row i).
        l_i2t = -(target * logits.log_softmax(dim=1)).sum(dim=1)
        l_t2i = -(target * logits.t().log_softmax(dim=1)).sum(dim=1)
        return (l_i2t + l_t2i).mean()
    raise ValueError(f"form must be 'code' or 'target', got {form!r}")


def proxy_loss(
    noisy_img: Tensor,
    proxy_txt: Tensor,
    logit_scale: float | Tensor,
    proxy_labels: Tensor,
    form: str = "code",
) -> Tensor:
    """SPS's L_n (METHODS §4.3, §4.5): the noisy images paired with their
    proxy captions form a batch, trained with the proxy labels as soft
    labels (:func:`soft_label_loss`). Proxy labels 0 (below the 0.5 floor)
    contribute nothing through their own term. Two noisy images may share a
    proxy caption; the duplicate is then a false negative, as in the
    released code."""
    return soft_label_loss(noisy_img, proxy_txt, logit_scale, proxy_labels, form=form)


def cross_modal_consistency(img: Tensor, txt: Tensor) -> Tensor:
    """SPS's L_cro on a reliable batch (METHODS §4.5).

        L_cro = mean_{i,j} ( S(I_i, T_j) - S(I_j, T_i) )^2 = mean((S - S^T)^2)

    with S the cosine matrix (the released code uses its SGRAF similarity in
    [0, 1]; for a dual encoder the cosine is the analogue), no margin, the
    mean over all n^2 entries (diagonal included, where it is 0).
    """
    s = _logits(img, txt, 1.0)
    return ((s - s.t()) ** 2).mean()


def metric_consistency(img: Tensor, txt: Tensor) -> Tensor:
    """SPS's L_met on a reliable batch (METHODS §4.5).

        L_met = mean_{i,j} ( cos(I_i, I_j) - cos(T_i, T_j) )^2

    over all n^2 entries, no margin: the image-image and text-text geometry
    of the reliable pairs should agree.
    """
    _check_pair(img, txt)
    i = F.normalize(img, dim=-1)
    t = F.normalize(txt, dim=-1)
    return ((i @ i.t() - t @ t.t()) ** 2).mean()


def sps_total(
    reliable_img: Tensor,
    reliable_txt: Tensor,
    logit_scale: float | Tensor,
    *,
    qc_img: Tensor | None = None,
    qc_txt: Tensor | None = None,
    qc_labels: Tensor | None = None,
    noisy_img: Tensor | None = None,
    proxy_txt: Tensor | None = None,
    proxy_labels: Tensor | None = None,
    lambda1: float = SPS_LAMBDA1,
    lambda2: float = SPS_LAMBDA2,
    form: str = "code",
) -> dict[str, Tensor]:
    """SPS's training loss (METHODS §4.5):

        L = L_re + L_qc + L_n + lambda1 * L_cro + lambda2 * L_met

    - L_re: ``mean_i(l_i2t + l_t2i)`` on the reliable batch (label 1);
    - L_qc: :func:`soft_label_loss` on the quasi-clean batch with y_qc;
    - L_n: :func:`proxy_loss` on the noisy images with proxy captions;
    - L_cro, L_met: on the reliable batch.

    The quasi-clean and noisy parts are optional (the released code brings
    them in only from epochs 10 and 15; an empty set has no batch); an
    absent part is 0. Returns a dict with ``total`` and the parts ``re``,
    ``qc``, ``n``, ``cro``, ``met`` (unweighted), for logging.
    """
    zero = reliable_img.new_zeros(())
    ones = reliable_img.new_ones(reliable_img.shape[0])
    parts = {
        "re": soft_label_loss(reliable_img, reliable_txt, logit_scale, ones, form="code"),
        "qc": zero,
        "n": zero,
        "cro": cross_modal_consistency(reliable_img, reliable_txt),
        "met": metric_consistency(reliable_img, reliable_txt),
    }
    if qc_img is not None or qc_txt is not None or qc_labels is not None:
        if qc_img is None or qc_txt is None or qc_labels is None:
            raise ValueError("pass qc_img, qc_txt and qc_labels together")
        parts["qc"] = soft_label_loss(qc_img, qc_txt, logit_scale, qc_labels, form=form)
    if noisy_img is not None or proxy_txt is not None or proxy_labels is not None:
        if noisy_img is None or proxy_txt is None or proxy_labels is None:
            raise ValueError("pass noisy_img, proxy_txt and proxy_labels together")
        parts["n"] = proxy_loss(noisy_img, proxy_txt, logit_scale, proxy_labels, form=form)
    parts["total"] = (
        parts["re"] + parts["qc"] + parts["n"] + lambda1 * parts["cro"] + lambda2 * parts["met"]
    )
    return parts


# --------------------------------------------------------------------------
# CLIPCleaner training: MixFix (METHODS §3.5)
# --------------------------------------------------------------------------

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
    p = _as_float_tensor(probs)
    if p.ndim != 2:
        raise ValueError(f"probs must be (n, K), got {tuple(p.shape)}")
    n = p.shape[0]
    y = torch.as_tensor(given_labels, device=p.device).long()
    sel = torch.as_tensor(selected, device=p.device).bool()
    _check_per_sample("given_labels", y, n)
    _check_per_sample("selected", sel, n)

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

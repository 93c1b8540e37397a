"""SDD's training side (METHODS §2.4, §2.5): the significance weight and the loss.

The offline scorer (:mod:`cleaner.methods.sdd.scorer`) writes the self-drop
mask, the confidence weight w_con and the memory-bank keys; the significance
weight w_sig needs the model being trained (one throw-away optimisation step
on a siamese copy), so it lives here with SDD's weighted loss, in torch.
Conventions: :mod:`cleaner.methods.losses`.

Memory bank reading
-------------------
SDD stores two memory-bank pairs per sample (§2.3: image-keyed and
text-keyed neighbours). Passing only ``mb_images``/``mb_texts`` to
:func:`siamese_significance` uses one bank for both directions (NPC's
form). Passing ``mb_t2i_images`` and ``mb_t2i_texts`` as well takes the i2t
losses from the image-keyed batch (``mb_images``, ``mb_texts``) and the t2i
losses from the text-keyed batch -- the direction whose query modality chose
the neighbour. METHODS.md does not say how the two entries enter c_i; this
is our reading.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from cleaner.methods.contrastive import (
    EncodeFn,
    as_float_tensor,
    check_per_sample,
    open_clip_encode,
    per_sample_infonce,
    symmetric_infonce,
)

OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


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
    b1 = as_float_tensor(loss_before_i2t).detach()
    a1 = as_float_tensor(loss_after_i2t, like=b1).detach()
    b2 = as_float_tensor(loss_before_t2i, like=b1).detach()
    a2 = as_float_tensor(loss_after_t2i, like=b1).detach()
    if not (b1.shape == a1.shape == b2.shape == a2.shape):
        raise ValueError("the four memory-bank loss vectors must have the same shape")
    c = 0.5 * (_ratio(b1, a1) + _ratio(b2, a2))
    return torch.where(c < 1, torch.tanh(c), torch.ones_like(c))


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


def _siamese_copy(model: nn.Module, siamese: nn.Module | None) -> nn.Module:
    """``model``'s weights in a module of their own, with no ``.grad``.

    A persistent ``siamese`` gets ``model``'s state loaded (saves the
    allocation of a deep copy every step); otherwise ``model`` is deep-copied.
    """
    if siamese is None:
        siamese = copy.deepcopy(model)
    else:
        siamese.load_state_dict(model.state_dict())
        siamese.train(model.training)
    # deepcopy copies .grad too; drop it so the step sees only this batch's
    # gradient (and no memory is spent on a stale copy).
    for p in siamese.parameters():
        p.grad = None
    return siamese


def _weighted_step(
    siamese: nn.Module,
    optimizer_factory: OptimizerFactory,
    optimizer_state: dict | None,
    encode_fn: EncodeFn,
    batch_images: Any,
    batch_texts: Any,
    w_con: Tensor,
) -> None:
    """One optimiser step of ``siamese`` on ``mean_i(w_con[i] * InfoNCE(i))``.

    ``optimizer_state`` is deep-copied into the fresh optimizer because
    ``Optimizer.load_state_dict`` may otherwise share tensors, and the step
    would write into the main optimizer's state.
    """
    optimizer = optimizer_factory(siamese)
    if optimizer_state is not None:
        optimizer.load_state_dict(copy.deepcopy(optimizer_state))
    optimizer.zero_grad(set_to_none=True)
    img, txt, scale = encode_fn(siamese, batch_images, batch_texts)
    per_sample = symmetric_infonce(img, txt, scale)
    w = as_float_tensor(w_con, like=per_sample).to(per_sample.device).detach()
    check_per_sample("w_con", w, per_sample.shape[0])
    (w * per_sample).mean().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def siamese_significance(
    model: nn.Module,
    optimizer_factory: OptimizerFactory,
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
       persistent ``siamese`` module is passed, load ``model``'s state into it).
    2. Siamese per-sample i2t and t2i InfoNCE on the memory-bank pairs,
       which form their own batch (``mb_images[i]``, ``mb_texts[i]`` is the
       memory-bank pair of batch sample i; ``mb_t2i_*``: see the module doc).
    3. One optimisation step of the siamese model on the batch with loss
       ``mean_i(w_con[i] * (l_i2t[i] + l_t2i[i]) / 2)``.
    4. The memory-bank losses again, then :func:`significance_weights`.

    ``encode_fn(module, images, texts) -> (img_emb, txt_emb, logit_scale)``
    (``logit_scale`` already exponentiated); :func:`open_clip_encode` for
    open_clip models, anything for a stub. ``optimizer_factory(siamese)``
    builds the siamese's optimizer from the siamese *module* (so it can
    rebuild the trainer's param groups); ``optimizer_state`` (e.g. the main
    optimizer's ``state_dict()``) is deep-copied into it so that Adam's
    moments match the main model's.

    Training/eval mode is inherited from ``model`` (the copy keeps it); no
    loss scaling is applied, so under fp16 autocast prefer bf16. The original
    model's parameters, buffers and ``.grad`` are never touched. Returns
    w_sig, shape (n,), detached.
    """
    if (mb_t2i_images is None) != (mb_t2i_texts is None):
        raise ValueError("pass both mb_t2i_images and mb_t2i_texts, or neither")
    siamese = _siamese_copy(model, siamese)
    bank = (mb_images, mb_texts, mb_t2i_images, mb_t2i_texts)
    before_i2t, before_t2i = _memory_bank_losses(siamese, encode_fn, *bank)
    _weighted_step(
        siamese, optimizer_factory, optimizer_state, encode_fn, batch_images, batch_texts, w_con
    )
    after_i2t, after_t2i = _memory_bank_losses(siamese, encode_fn, *bank)
    return significance_weights(before_i2t, after_i2t, before_t2i, after_t2i).detach()


def sdd_loss(per_sample_symmetric: Tensor, w_con: Tensor, w_sig: Tensor) -> Tensor:
    """SDD's training loss on D_p (METHODS §2.5).

        L = mean_i( w_con(i) * w_sig(i) * InfoNCE(i) ),

    InfoNCE(i) the symmetric per-sample loss ``(l_i2t + l_t2i) / 2`` of the
    kept pairs. Both weights are detached; the mean is over the batch size.
    """
    n = per_sample_symmetric.shape[0]
    wc = as_float_tensor(w_con, like=per_sample_symmetric).detach()
    ws = as_float_tensor(w_sig, like=per_sample_symmetric).detach()
    check_per_sample("w_con", wc, n)
    check_per_sample("w_sig", ws, n)
    return (wc * ws * per_sample_symmetric).mean()

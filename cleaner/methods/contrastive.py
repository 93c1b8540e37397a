"""The CLIP symmetric InfoNCE per sample, and the checks every method's loss shares.

OSA, SDD and SPS all weight the same per-sample contrastive loss (METHODS
§1.3, §2.4, §2.5, §4.1, §4.5), so it lives here once, under the per-method
loss modules (``cleaner.methods.<method>.loss``), rather than in any one of
them. The conventions (normalisation inside, ``logit_scale`` already
exponentiated) are those listed in :mod:`cleaner.methods.losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: ``encode_fn(module, images, texts) -> (img_emb, txt_emb, logit_scale)``.
EncodeFn = Callable[[nn.Module, Any, Any], tuple[Tensor, Tensor, Any]]


def as_float_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    """A float tensor view of ``x`` (tensor, array, list or scalar)."""
    if isinstance(x, Tensor):
        return x if x.is_floating_point() else x.float()
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float32
    device = like.device if like is not None else None
    return torch.as_tensor(x, dtype=dtype, device=device)


def check_pair(img: Tensor, txt: Tensor) -> None:
    if img.ndim != 2 or txt.ndim != 2 or img.shape != txt.shape:
        raise ValueError(
            f"expected two (n, d) embedding batches of the same shape, got "
            f"{tuple(img.shape)} and {tuple(txt.shape)}"
        )


def check_per_sample(name: str, value: Tensor, n: int) -> None:
    if value.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(value.shape)}")


def cosine_logits(img: Tensor, txt: Tensor, logit_scale: float | Tensor) -> Tensor:
    """logit_scale * cos(I_i, T_j), an (n, n) matrix; rows are images."""
    check_pair(img, txt)
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
    logits = cosine_logits(img, txt, logit_scale)
    target = torch.arange(logits.shape[0], device=logits.device)
    l_i2t = F.cross_entropy(logits, target, reduction="none")
    l_t2i = F.cross_entropy(logits.t(), target, reduction="none")
    return l_i2t, l_t2i


def symmetric_infonce(img: Tensor, txt: Tensor, logit_scale: float | Tensor) -> Tensor:
    """Per-sample symmetric InfoNCE, ``(l_i2t + l_t2i) / 2``, shape (n,)."""
    l_i2t, l_t2i = per_sample_infonce(img, txt, logit_scale)
    return (l_i2t + l_t2i) / 2


def open_clip_encode(
    model: nn.Module, images: Tensor, texts: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``encode_fn`` for an open_clip ``CLIP`` model (images preprocessed,
    texts tokenised): ``(encode_image, encode_text, logit_scale.exp())``."""
    return model.encode_image(images), model.encode_text(texts), model.logit_scale.exp()

"""SPS's training side (METHODS §4.3-§4.5): soft labels, proxy labels and the total loss.

The offline scorer (:mod:`cleaner.methods.sps.scorer`) writes the partition,
clean probabilities and proxy keys in numpy; the trainer turns them into
soft-label InfoNCE and the consistency terms on the model's own embeddings,
in torch, which is why this is a module of its own. Conventions:
:mod:`cleaner.methods.losses`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cleaner.methods.contrastive import (
    as_float_tensor,
    check_pair,
    check_per_sample,
    cosine_logits,
    per_sample_infonce,
)

#: SPS's weights of L_cro and L_met in the released code.
SPS_LAMBDA1 = 25.0
SPS_LAMBDA2 = 25.0


def sps_match_probability(img: Tensor, txt: Tensor, logit_scale: float | Tensor) -> Tensor:
    """y_hat of METHODS §4.4: the mean of the pair's i2t and t2i matching
    probabilities, i.e. the diagonals of the row- and column-softmax of the
    batch's logit matrix, clamped to [0, 1]. Computed without a graph (it is
    a label, not a loss)."""
    with torch.no_grad():
        logits = cosine_logits(img, txt, logit_scale)
        p_i2t = logits.softmax(dim=1).diagonal()
        p_t2i = logits.softmax(dim=0).diagonal()
        return ((p_i2t + p_t2i) / 2).clamp(0, 1)


def sps_quasi_clean_labels(clean_prob: Tensor, match_prob: Tensor) -> Tensor:
    """Quasi-clean soft label (METHODS §4.4): y_qc = p + (1 - p) * y_hat,
    p the GMM clean probability (``sps_clean_prob``), y_hat from
    :func:`sps_match_probability`."""
    y_hat = as_float_tensor(match_prob).detach()
    p = as_float_tensor(clean_prob, like=y_hat).to(y_hat.device).detach()
    return p + (1 - p) * y_hat


def sps_proxy_labels(match_prob: Tensor, image_cosine: Tensor, floor: float = 0.5) -> Tensor:
    """Proxy label, released-code form (METHODS §4.3).

        y_p = y_hat(noisy image, proxy caption) * cos(noisy image, proxy's image)
        y_p = 0 where y_p < floor (0.5)

    The paper's 1 / (gamma + exp(-b S)) has no published values and is not
    implemented.
    """
    y_hat = as_float_tensor(match_prob).detach()
    cos = as_float_tensor(image_cosine, like=y_hat).to(y_hat.device).detach()
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
    y = as_float_tensor(soft_labels, like=img).to(img.device).detach()
    check_per_sample("soft_labels", y, n)
    if form == "code":
        l_i2t, l_t2i = per_sample_infonce(img, txt, logit_scale)
        return (y * (l_i2t + l_t2i)).mean()
    if form == "target":
        logits = cosine_logits(img, txt, logit_scale)
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
    s = cosine_logits(img, txt, 1.0)
    return ((s - s.t()) ** 2).mean()


def metric_consistency(img: Tensor, txt: Tensor) -> Tensor:
    """SPS's L_met on a reliable batch (METHODS §4.5).

        L_met = mean_{i,j} ( cos(I_i, I_j) - cos(T_i, T_j) )^2

    over all n^2 entries, no margin: the image-image and text-text geometry
    of the reliable pairs should agree.
    """
    check_pair(img, txt)
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

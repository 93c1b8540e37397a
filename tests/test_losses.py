"""Tests of cleaner.methods.losses: hand-computed values, gradient isolation of
zero-weight samples, and the siamese copy of SDD not leaking into the model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cleaner.methods import losses as L


def _batch(n=6, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


# --------------------------------------------------------------------------
# per-sample InfoNCE
# --------------------------------------------------------------------------


def test_infonce_hand_computed_two_pairs():
    img = torch.tensor([[2.0, 0.0], [0.0, 3.0]])  # normalised inside
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    l_i2t, l_t2i = L.per_sample_infonce(img, txt, 1.0)
    # logits = identity: every CE = -log(e / (e + 1)) = log(1 + e^-1)
    expected = math.log(1 + math.exp(-1))
    assert torch.allclose(l_i2t, torch.full((2,), expected))
    assert torch.allclose(l_t2i, torch.full((2,), expected))


def test_infonce_matches_clip_mean_loss():
    img, txt = _batch()
    scale = torch.tensor(14.0)
    l_i2t, l_t2i = L.per_sample_infonce(img, txt, scale)
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    target = torch.arange(len(img))
    clip = (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
    assert torch.allclose(((l_i2t + l_t2i) / 2).mean(), clip)
    assert torch.allclose(L.symmetric_infonce(img, txt, scale), (l_i2t + l_t2i) / 2)


def test_infonce_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        L.per_sample_infonce(torch.zeros(3, 4), torch.zeros(2, 4), 1.0)


# --------------------------------------------------------------------------
# weighted losses: known values, zero weight adds no gradient
# --------------------------------------------------------------------------


def test_weighted_losses_hand_computed():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    w = torch.tensor([1.0, 0.5, 0.0, 2.0])
    # (1 + 1 + 0 + 8) / 4: mean over the batch, not over sum(w)
    assert L.osa_loss(loss, w).item() == pytest.approx(2.5)
    w_sig = torch.tensor([1.0, 1.0, 1.0, 0.5])
    # (1 + 1 + 0 + 4) / 4
    assert L.sdd_loss(loss, w, w_sig).item() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        L.osa_loss(loss, w[:3])


@pytest.mark.parametrize("which", ["osa", "sdd"])
def test_zero_weight_sample_adds_no_gradient(which):
    img, txt = _batch(n=5, seed=1)
    k = 2
    w = torch.tensor([0.3, 1.0, 0.0, 0.7, 0.2])

    def grads(use_fn: bool):
        i = img.clone().requires_grad_(True)
        t = txt.clone().requires_grad_(True)
        per = L.symmetric_infonce(i, t, 10.0)
        if use_fn:
            loss = L.osa_loss(per, w) if which == "osa" else L.sdd_loss(per, w, torch.ones(5))
        else:
            # the same batch with sample k's own loss term left out entirely
            keep = torch.arange(5) != k
            loss = (w[keep] * per[keep]).sum() / 5
        loss.backward()
        return i.grad, t.grad

    gi, gt = grads(True)
    hi, ht = grads(False)
    assert torch.allclose(gi, hi, atol=1e-7)
    assert torch.allclose(gt, ht, atol=1e-7)


def test_weights_are_detached():
    per = torch.tensor([1.0, 2.0], requires_grad=True)
    w = torch.tensor([0.5, 1.0], requires_grad=True)
    L.osa_loss(per, w).backward()
    assert w.grad is None
    assert torch.allclose(per.grad, torch.tensor([0.25, 0.5]))


# --------------------------------------------------------------------------
# OSA weights
# --------------------------------------------------------------------------


def test_osa_paper_weight_values():
    beta = 0.2
    s = torch.tensor([beta - 0.3, beta, beta + 2 / 3, beta + 0.5, beta + 1.0, beta + 0.1])
    w = L.osa_weight_paper(s, beta)
    expected = torch.tensor([0.0, 0.0, 4 / 27, 0.25 * 0.5, 0.0, 0.01 * 0.9])
    assert torch.allclose(w, expected, atol=1e-6)
    wn = L.osa_weight_paper(s, beta, normalize=True)
    assert wn[2].item() == pytest.approx(1.0, abs=1e-5)
    assert torch.allclose(wn, expected / (4 / 27), atol=1e-5)
    # the cubic's maximum over a fine grid is at d = 2/3
    d = torch.linspace(0, 1, 3001)
    wd = L.osa_weight_paper(d, 0.0)
    assert d[wd.argmax()].item() == pytest.approx(2 / 3, abs=1e-3)
    assert wd.max().item() == pytest.approx(4 / 27, abs=1e-6)


def test_osa_paper_weight_never_negative_for_negative_beta():
    # beta < 0 allows d > 1, where the cubic is negative: clamped to 0
    w = L.osa_weight_paper(torch.tensor([0.9, 1.0]), -0.3)
    assert (w >= 0).all()
    assert w[1].item() == 0.0  # d = 1.3


def test_osa_code_weight_per_batch():
    beta = 0.2
    s = torch.tensor([0.3, 0.4, 0.1, 0.2])  # d = 0.1, 0.2, -0.1, 0
    w = L.osa_weight_code(s, beta)
    # x = d / 0.2 = 0.5, 1, (-0.5), 0 -> x^2 (1 - x^2); d <= 0 -> 0
    expected = torch.tensor([0.25 * 0.75, 0.0, 0.0, 0.0])
    assert torch.allclose(w, expected, atol=1e-6)
    # peak 0.25 at x = 1/sqrt(2)
    s = torch.tensor([1 / math.sqrt(2), 1.0])
    assert L.osa_weight_code(s, 0.0)[0].item() == pytest.approx(0.25, abs=1e-6)


def test_osa_code_weight_guard_all_below_beta():
    w = L.osa_weight_code(torch.tensor([0.1, 0.15, 0.2]), 0.2)  # max d = 0
    assert torch.equal(w, torch.zeros(3))
    w = L.osa_weight_code(torch.tensor([-0.5, 0.0]), 0.2)  # max d < 0
    assert torch.equal(w, torch.zeros(2))
    assert torch.isfinite(w).all()
    assert L.osa_weight_code(torch.zeros(0), 0.2).numel() == 0


# --------------------------------------------------------------------------
# SDD: significance weights and the siamese step
# --------------------------------------------------------------------------


def test_significance_tanh_or_one_rule():
    b_i2t = torch.tensor([1.0, 2.0, 1.0, 3.0])
    a_i2t = torch.tensor([2.0, 1.0, 1.0, 1.0])
    b_t2i = torch.tensor([1.0, 1.0, 1.0, 0.3])
    a_t2i = torch.tensor([4.0, 1.0, 1.0, 1.0])
    w = L.significance_weights(b_i2t, a_i2t, b_t2i, a_t2i)
    # c = [0.5*(0.5+0.25), 0.5*(2+1), 0.5*(1+1), 0.5*(3+0.3)]
    c0 = 0.375
    expected = torch.tensor([math.tanh(c0), 1.0, 1.0, 1.0])
    assert torch.allclose(w, expected)
    # just below 1: tanh; at 1: 1
    w = L.significance_weights(
        torch.tensor([0.99, 1.0]), torch.ones(2), torch.tensor([0.99, 1.0]), torch.ones(2)
    )
    assert w[0].item() == pytest.approx(math.tanh(0.99))
    assert w[1].item() == 1.0


def test_significance_guards_zero_after_loss():
    w = L.significance_weights(
        torch.tensor([0.5, 0.0, 0.0]),
        torch.tensor([0.0, 0.0, 0.0]),
        torch.tensor([0.5, 0.0, 0.4]),
        torch.tensor([1.0, 0.0, 0.8]),
    )
    # [inf -> 1], [0/0 -> ratio 1 twice -> c = 1 -> 1], [0/0 -> 1 and 0.5 -> c = 0.75]
    assert torch.isfinite(w).all()
    assert torch.allclose(w, torch.tensor([1.0, 1.0, math.tanh(0.75)]))


class ScaleStub(nn.Module):
    """A 'model' whose only parameter is the log logit scale; embeddings are
    the inputs themselves, so every loss is known in closed form."""

    def __init__(self, log_scale: float = 1.0):
        super().__init__()
        self.log_scale = nn.Parameter(torch.tensor(log_scale))


def stub_encode(model, images, texts):
    return images, texts, model.log_scale.exp()


def _expected_wsig(theta0, lr, batch_img, batch_txt, w_con, mb_img, mb_txt):
    """Independent re-computation: one SGD step on theta by hand."""
    theta = torch.tensor(theta0, requires_grad=True)
    per = L.symmetric_infonce(batch_img, batch_txt, theta.exp())
    (g,) = torch.autograd.grad((w_con * per).mean(), theta)
    theta1 = theta.detach() - lr * g
    b1, b2 = L.per_sample_infonce(mb_img, mb_txt, math.exp(theta0))
    a1, a2 = L.per_sample_infonce(mb_img, mb_txt, theta1.exp())
    c = 0.5 * (b1 / a1 + b2 / a2)
    return torch.where(c < 1, torch.tanh(c), torch.ones_like(c)), c


def test_siamese_significance_before_after_ratio_on_stub():
    batch_img, batch_txt = _batch(n=4, d=3, seed=3)
    mb_img, mb_txt = _batch(n=4, d=3, seed=4)
    w_con = torch.tensor([1.0, 0.5, 0.2, 0.0])
    model = ScaleStub(1.0)
    lr = 0.5
    w = L.siamese_significance(
        model,
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        batch_img,
        batch_txt,
        w_con,
        mb_img,
        mb_txt,
        stub_encode,
    )
    expected, c = _expected_wsig(1.0, lr, batch_img, batch_txt, w_con, mb_img, mb_txt)
    assert torch.allclose(w, expected, atol=1e-6)
    assert not w.requires_grad
    # the example exercises a non-trivial step: c differs from 1
    assert not torch.allclose(c, torch.ones_like(c))


def test_siamese_significance_zero_w_con_means_no_step():
    batch_img, batch_txt = _batch(n=4, d=3, seed=5)
    mb_img, mb_txt = _batch(n=4, d=3, seed=6)
    w = L.siamese_significance(
        ScaleStub(0.5),
        lambda m: torch.optim.SGD(m.parameters(), lr=1.0),
        batch_img,
        batch_txt,
        torch.zeros(4),
        mb_img,
        mb_txt,
        stub_encode,
    )
    # after == before -> c = 1 -> w_sig = 1
    assert torch.allclose(w, torch.ones(4))


def test_siamese_significance_two_banks():
    batch_img, batch_txt = _batch(n=3, d=3, seed=7)
    mb_img, mb_txt = _batch(n=3, d=3, seed=8)
    mb2_img, mb2_txt = _batch(n=3, d=3, seed=9)
    lr, theta0 = 0.3, 1.2
    w = L.siamese_significance(
        ScaleStub(theta0),
        lambda m: torch.optim.SGD(m.parameters(), lr=lr),
        batch_img,
        batch_txt,
        torch.ones(3),
        mb_img,
        mb_txt,
        stub_encode,
        mb_t2i_images=mb2_img,
        mb_t2i_texts=mb2_txt,
    )
    theta = torch.tensor(theta0, requires_grad=True)
    (g,) = torch.autograd.grad(L.symmetric_infonce(batch_img, batch_txt, theta.exp()).mean(), theta)
    theta1 = (theta - lr * g).detach()
    b1, _ = L.per_sample_infonce(mb_img, mb_txt, math.exp(theta0))
    a1, _ = L.per_sample_infonce(mb_img, mb_txt, theta1.exp())
    _, b2 = L.per_sample_infonce(mb2_img, mb2_txt, math.exp(theta0))
    _, a2 = L.per_sample_infonce(mb2_img, mb2_txt, theta1.exp())
    assert torch.allclose(w, L.significance_weights(b1, a1, b2, a2), atol=1e-6)
    with pytest.raises(ValueError):
        L.siamese_significance(
            ScaleStub(),
            lambda m: torch.optim.SGD(m.parameters(), lr=lr),
            batch_img,
            batch_txt,
            torch.ones(3),
            mb_img,
            mb_txt,
            stub_encode,
            mb_t2i_images=mb2_img,
        )


class TwoTower(nn.Module):
    def __init__(self, d_in=6, d=4):
        super().__init__()
        self.img = nn.Linear(d_in, d)
        self.txt = nn.Linear(d_in, d)
        self.log_scale = nn.Parameter(torch.tensor(2.0))


def tower_encode(model, images, texts):
    return model.img(images), model.txt(texts), model.log_scale.exp()


@pytest.mark.parametrize("reuse", [False, True])
def test_siamese_does_not_leak_into_model(reuse):
    torch.manual_seed(0)
    model = TwoTower()
    x, y = _batch(n=5, d=6, seed=10)
    mx, my = _batch(n=5, d=6, seed=11)
    # a main optimizer with state, and pending grads on the main model
    main_opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    L.symmetric_infonce(*tower_encode(model, x, y)).mean().backward()
    main_opt.step()
    main_opt.zero_grad()
    L.symmetric_infonce(*tower_encode(model, mx, my)).mean().backward()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    grad_ids = {n: id(p.grad) for n, p in model.named_parameters()}
    opt_state = {
        k: {n: v.clone() for n, v in s.items()} for k, s in main_opt.state_dict()["state"].items()
    }

    siamese = TwoTower() if reuse else None
    w = L.siamese_significance(
        model,
        lambda m: torch.optim.Adam(m.parameters(), lr=1e-1),
        x,
        y,
        torch.rand(5),
        mx,
        my,
        tower_encode,
        optimizer_state=main_opt.state_dict(),
        siamese=siamese,
    )
    assert w.shape == (5,) and torch.isfinite(w).all()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), params[n]), n
        assert p.grad is not None and id(p.grad) == grad_ids[n], n
        assert torch.equal(p.grad, grads[n]), n
    for k, s in main_opt.state_dict()["state"].items():
        for n, v in s.items():
            assert torch.equal(v, opt_state[k][n]), (k, n)
    if reuse:
        # the reused module did take the step
        assert not torch.equal(siamese.img.weight.detach(), params["img.weight"])


def test_siamese_significance_with_tiny_open_clip_model():
    open_clip_model = pytest.importorskip("open_clip.model")
    torch.manual_seed(0)
    model = open_clip_model.CLIP(
        embed_dim=8,
        vision_cfg=open_clip_model.CLIPVisionCfg(
            layers=1, width=16, patch_size=8, image_size=16, head_width=8
        ),
        text_cfg=open_clip_model.CLIPTextCfg(
            context_length=6, vocab_size=30, width=16, heads=2, layers=1
        ),
    )
    images = torch.rand(3, 3, 16, 16)
    texts = torch.randint(0, 30, (3, 6))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    w = L.siamese_significance(
        model,
        lambda m: torch.optim.SGD(m.parameters(), lr=1e-2),
        images,
        texts,
        torch.ones(3),
        images.flip(0),
        texts.flip(0),
        L.open_clip_encode,
    )
    assert w.shape == (3,) and ((w > 0) & (w <= 1)).all()
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]) and p.grad is None, n


# --------------------------------------------------------------------------
# SPS
# --------------------------------------------------------------------------


def test_consistency_losses_zero_when_symmetric():
    img, _ = _batch(n=5, d=4, seed=12)
    assert L.cross_modal_consistency(img, img).item() == pytest.approx(0.0, abs=1e-7)
    assert L.metric_consistency(img, img).item() == pytest.approx(0.0, abs=1e-7)
    # a rotation of the text space keeps the metric: L_met = 0
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
    assert L.metric_consistency(img, img @ q).item() == pytest.approx(0.0, abs=1e-6)


def test_consistency_losses_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised inside
    txt = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    # S = [[1, .6], [0, .8]]: (S - S^T)^2 has two entries .36 -> mean .72 / 4
    assert L.cross_modal_consistency(img, txt).item() == pytest.approx(0.18)
    # cos(I) = eye, cos(T) = [[1, .6], [.6, 1]] -> two entries .36 -> .18
    assert L.metric_consistency(img, txt).item() == pytest.approx(0.18)
    img3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    txt3 = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    # S = [[0,0,1],[1,1,0],[0,0,1]] (row i: I_i against T_0..T_2)
    # S - S^T = [[0,-1,1],[1,0,0],[-1,0,0]] -> four ones / 9
    assert L.cross_modal_consistency(img3, txt3).item() == pytest.approx(4 / 9)
    # cos(I) = [[1,0,1],[0,1,0],[1,0,1]], cos(T) = [[1,1,0],[1,1,0],[0,0,1]]
    # differ at (0,1),(1,0),(0,2),(2,0) -> 4 / 9
    assert L.metric_consistency(img3, txt3).item() == pytest.approx(4 / 9)


def test_soft_label_loss_forms():
    img, txt = _batch(n=4, d=3, seed=13)
    scale = 1 / 0.07
    l_i2t, l_t2i = L.per_sample_infonce(img, txt, scale)
    y = torch.tensor([1.0, 0.5, 0.0, 0.25])
    code = L.soft_label_loss(img, txt, scale, y)
    assert code.item() == pytest.approx((y * (l_i2t + l_t2i)).mean().item(), rel=1e-6)
    # label 1 everywhere: both forms are the summed InfoNCE
    ones = torch.ones(4)
    plain = (l_i2t + l_t2i).mean().item()
    assert L.soft_label_loss(img, txt, scale, ones).item() == pytest.approx(plain, rel=1e-6)
    assert L.soft_label_loss(img, txt, scale, ones, form="target").item() == pytest.approx(
        plain, rel=1e-5
    )
    # target form by hand for one sample
    logits = scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).t()
    q = torch.full((4,), (1 - 0.5) / 3)
    q[1] = 0.5
    by_hand = -(q * logits[1].log_softmax(0)).sum() - (q * logits[:, 1].log_softmax(0)).sum()
    tgt = L.soft_label_loss(img, txt, scale, y, form="target")
    others = []
    for i, yi in enumerate(y.tolist()):
        qi = torch.full((4,), (1 - yi) / 3)
        qi[i] = yi
        others.append(
            -(qi * logits[i].log_softmax(0)).sum() - (qi * logits[:, i].log_softmax(0)).sum()
        )
    assert tgt.item() == pytest.approx(torch.stack(others).mean().item(), rel=1e-5)
    assert others[1].item() == pytest.approx(by_hand.item())
    with pytest.raises(ValueError):
        L.soft_label_loss(img, txt, scale, y, form="nope")


def test_sps_labels():
    img = torch.eye(3)
    p = L.sps_match_probability(img, img, 1.0)
    # logits = eye: diag softmax = e / (e + 2) in both directions
    assert torch.allclose(p, torch.full((3,), math.e / (math.e + 2)))
    y_qc = L.sps_quasi_clean_labels(torch.tensor([1.0, 0.5, 0.0]), torch.tensor([0.2, 0.2, 0.2]))
    assert torch.allclose(y_qc, torch.tensor([1.0, 0.6, 0.2]))
    y_p = L.sps_proxy_labels(torch.tensor([0.9, 0.9, 0.6]), torch.tensor([0.9, 0.5, 0.9]))
    assert torch.allclose(y_p, torch.tensor([0.81, 0.0, 0.54]))


def test_sps_total_combination():
    r_img, r_txt = _batch(n=4, d=3, seed=14)
    q_img, q_txt = _batch(n=3, d=3, seed=15)
    n_img, p_txt = _batch(n=2, d=3, seed=16)
    qy = torch.tensor([0.9, 0.7, 0.8])
    py = torch.tensor([0.6, 0.0])
    scale = 1 / 0.07
    out = L.sps_total(
        r_img,
        r_txt,
        scale,
        qc_img=q_img,
        qc_txt=q_txt,
        qc_labels=qy,
        noisy_img=n_img,
        proxy_txt=p_txt,
        proxy_labels=py,
    )
    l1, l2 = L.per_sample_infonce(r_img, r_txt, scale)
    assert out["re"].item() == pytest.approx((l1 + l2).mean().item(), rel=1e-6)
    assert out["qc"].item() == pytest.approx(
        L.soft_label_loss(q_img, q_txt, scale, qy).item(), rel=1e-6
    )
    assert out["n"].item() == pytest.approx(L.proxy_loss(n_img, p_txt, scale, py).item(), rel=1e-6)
    expected = (out["re"] + out["qc"] + out["n"] + 25 * out["cro"] + 25 * out["met"]).item()
    assert out["total"].item() == pytest.approx(expected, rel=1e-6)
    only_reliable = L.sps_total(r_img, r_txt, scale, lambda1=0.0, lambda2=0.0)
    assert only_reliable["total"].item() == pytest.approx(out["re"].item(), rel=1e-6)
    with pytest.raises(ValueError):
        L.sps_total(r_img, r_txt, scale, qc_img=q_img)


# --------------------------------------------------------------------------
# MixFix
# --------------------------------------------------------------------------


def test_mixfix_decisions_on_planted_predictions():
    probs = torch.tensor(
        [
            [0.90, 0.05, 0.05],  # 0 not selected, agrees, conf .9  -> absorb
            [0.10, 0.85, 0.05],  # 1 not selected, disagrees (y=0), .85 >= .8 -> relabel to 1
            [0.75, 0.20, 0.05],  # 2 not selected, agrees, .75 < .8 -> drop
            [0.30, 0.65, 0.05],  # 3 not selected, disagrees, .65 -> drop
            [0.05, 0.05, 0.90],  # 4 selected, disagrees (y=0) -> kept, label 0
            [0.34, 0.33, 0.33],  # 5 selected, low confidence -> kept
            [0.10, 0.10, 0.80],  # 6 not selected, agrees, conf == theta_r -> absorb
        ]
    )
    y = torch.tensor([0, 0, 0, 0, 0, 1, 2])
    sel = torch.tensor([False, False, False, False, True, True, False])
    new, use, dec = L.mixfix_decisions(probs, y, sel, theta_r=0.8, theta_r2=0.8)
    A, R, D, S = L.MIXFIX_ABSORB, L.MIXFIX_RELABEL, L.MIXFIX_DROP, L.MIXFIX_SELECTED
    assert dec.tolist() == [A, R, D, D, S, S, A]
    assert new.tolist() == [0, 1, 0, 0, 0, 1, 2]
    assert use.tolist() == [True, True, False, False, True, True, True]
    assert dec.dtype == torch.int8 and new.dtype == torch.int64 and use.dtype == torch.bool

    # a stricter relabel threshold drops sample 1
    _, use2, dec2 = L.mixfix_decisions(probs, y, sel, theta_r=0.7, theta_r2=0.9)
    assert dec2.tolist() == [A, D, A, D, S, S, A]
    assert use2.tolist() == [True, False, True, False, True, True, True]

    # the released code's behaviour: selected + confident disagreement is relabelled
    new3, _, dec3 = L.mixfix_decisions(probs, y, sel, 0.8, 0.8, relabel_selected=True)
    assert dec3[4].item() == L.MIXFIX_SELECTED_RELABEL and new3[4].item() == 2
    assert dec3[5].item() == S

    with pytest.raises(ValueError):
        L.mixfix_decisions(probs, y, sel, theta_r=0.9, theta_r2=0.8)


def test_mixup_lambda_one_is_plain_cross_entropy():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 7, generator=g)
    labels = torch.tensor([0, 2, 1, 2, 0])
    y = F.one_hot(labels, 3).float()
    x_mix, y_mix, lam = L.mixup(x, y, alpha=1.0, generator=g, lam=1.0)
    assert lam == 1.0
    assert torch.equal(x_mix, x) and torch.equal(y_mix, y)
    logits = torch.randn(5, 3, generator=g)
    assert L.mixup_cross_entropy(logits, y_mix).item() == pytest.approx(
        F.cross_entropy(logits, labels).item(), rel=1e-6
    )
    # alpha <= 0 means no mixing too
    x0, y0, lam0 = L.mixup(x, y, alpha=0.0, generator=g)
    assert lam0 == 1.0 and torch.equal(x0, x) and torch.equal(y0, y)


def test_mixup_draws():
    x = torch.arange(8.0).reshape(4, 2)
    y = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    a = L.mixup(x, y, 1.0, torch.Generator().manual_seed(3))
    b = L.mixup(x, y, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and a[2] == b[2]  # reproducible from the generator
    x_mix, y_mix, lam = a
    assert 0.5 <= lam <= 1.0
    assert torch.allclose(y_mix.sum(1), torch.ones(4))
    # mixing preserves the batch mean (a permutation is mixed in)
    assert torch.allclose(x_mix.mean(0), x.mean(0))
    g = torch.Generator().manual_seed(4)
    lams = [L.mixup(x, y, 1.0, g)[2] for _ in range(2000)]
    # Beta(1, 1) = U(0, 1): E[max(U, 1 - U)] = 0.75
    assert sum(lams) / len(lams) == pytest.approx(0.75, abs=0.015)
    lams = [L.mixup(x, y, 0.3, g)[2] for _ in range(200)]
    assert all(0.5 <= v <= 1.0 for v in lams)


def test_class_balanced_weights():
    labels = torch.tensor([0, 0, 0, 1, 2, 2])
    w = L.class_balanced_weights(labels, 4)
    assert w.dtype == torch.float64
    assert torch.allclose(
        w, torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0, 0.5, 0.5], dtype=torch.float64)
    )
    per_class = torch.zeros(4, dtype=torch.float64).index_add_(0, labels, w)
    assert torch.allclose(per_class, torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError):
        L.class_balanced_weights(torch.tensor([0, 4]), 4)

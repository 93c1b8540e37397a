import numpy as np
import pytest

from cleaner.methods.base import Pairs
from cleaner.methods.beta import (
    BetaEstimate,
    _grid_estimate,
    noise_beta,
    sample_mismatched_indices,
    shuffled_beta,
)
from cleaner.methods.osa.scorer import OSA_PEAK, OSAScorer, osa_weight


def test_osa_weight_hand_values():
    beta = 0.2
    cos = np.array([-1.0, 0.1, 0.2, 0.3, 0.2 + 2 / 3, 1.0])
    w = osa_weight(cos, beta)
    d = cos - beta
    expected = [0, 0, 0, 0.1**2 * 0.9, 4 / 27, 0.8**2 * 0.2]
    np.testing.assert_allclose(w, expected, rtol=1e-6, atol=1e-7)
    assert np.isclose(w.max(), OSA_PEAK, rtol=1e-6)
    assert np.all(w[d <= 0] == 0)


def test_osa_peak_is_max_of_cubic():
    d = np.linspace(0, 1, 100001)
    w = osa_weight(d + 0.1, 0.1)
    assert d[np.argmax(w)] == pytest.approx(2 / 3, abs=2e-3)  # float32 output: the top is flat
    assert w.max() == pytest.approx(4 / 27, rel=1e-6)


def _pairs(n=200, dim=16, seed=0, noise=0.0):
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(n, dim))
    txt = img + noise * rng.normal(size=(n, dim))
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    txt /= np.linalg.norm(txt, axis=1, keepdims=True)
    return Pairs(img, txt)


def test_osa_scorer_columns_and_roundtrip():
    pairs = _pairs(noise=0.5)
    sc = OSAScorer(beta=0.1).fit()
    cols = sc.transform(pairs)
    assert set(cols) == {"cosine", "osa_weight", "osa_weight_norm"}
    np.testing.assert_allclose(cols["osa_weight_norm"], cols["osa_weight"] / (4 / 27), rtol=1e-6)
    assert cols["osa_weight_norm"].max() <= 1.0 + 1e-6
    again = OSAScorer.from_params(sc.get_params()).transform(pairs)
    for k in cols:
        np.testing.assert_array_equal(cols[k], again[k])


def test_grid_estimate_matches_hand_computation():
    cos = np.array([[0.1, 0.3], [0.2, 0.4]])
    est = _grid_estimate(cos, "noise", 0)
    assert est.value == pytest.approx(0.25)
    # rows means 0.2, 0.3 (var 0.005); column means 0.15, 0.35 (var 0.02)
    assert est.se == pytest.approx(np.sqrt(0.005 / 2 + 0.02 / 2))
    assert est.n_pairs == 4 and est.k == 2


def test_shuffled_beta_pairs_are_mismatched_and_seeded():
    i, j = sample_mismatched_indices([5, 3, 7], 5000, seed=3)
    assert np.all(i != j) and i.max() < 15 and j.max() < 15 and j.min() >= 0
    i2, j2 = sample_mismatched_indices([5, 3, 7], 5000, seed=3)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(j, j2)
    pairs = _pairs(n=500, noise=0.1)
    b = shuffled_beta(pairs.image, pairs.text, k=4000, seed=0)
    # random unit vectors in 16-d: mismatched cosine centred near 0, matched near 1
    # 500 rows support 500 independent mismatched pairs, not the 4000 asked for
    assert b.k == b.n_pairs == 500
    assert abs(b.value) < 0.05 and b.se == pytest.approx(b.std / np.sqrt(500))
    assert b.source == "shuffled"


def test_noise_beta_is_seeded(tiny_ckpt):
    from cleaner.estimator.model import load_estimator

    est = load_estimator("nclean-tiny", str(tiny_ckpt), device="cpu")
    a = noise_beta(est, k=8, seed=1)
    b = noise_beta(est, k=8, seed=1)
    assert a == b and a.n_pairs == 64 and a.source == "noise"
    assert -1 <= a.value <= 1 and a.se > 0


def test_manual_beta():
    assert BetaEstimate.manual(0.3).to_dict()["source"] == "manual"


def test_negative_beta_never_gives_negative_weights():
    w = osa_weight(np.array([-0.2, 0.0, 0.5, 0.69, 0.71, 0.95]), beta=-0.3)
    assert (w >= 0).all()
    assert w[0] > 0 and w[-1] == 0  # d = 1.25 > 1: clamped, not negative

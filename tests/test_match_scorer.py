"""MatchScorer on synthetic planted-noise pairs: separation, decisions,
calibration, row-order independence, params round trip, and the two
corrections checked against brute-force formulas on tiny data."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.metrics import roc_auc_score

from cleaner.methods.match.pool import pool_mask
from cleaner.methods.match.scorer import COLUMNS, MatchScorer
from cleaner.worlds.synthetic import make_pair_mixture

N, DIM, NOISE = 4000, 256, 0.3
SMALL = {"pool_size": 1024, "batch_size": 256, "fit_size": 4000}


@pytest.fixture(scope="module")
def world():
    image, text, noisy = make_pair_mixture(N, dim=DIM, noise_fraction=NOISE, seed=7)
    return image, text, noisy, np.arange(1000, 1000 + N, dtype=np.int64)


@pytest.fixture(scope="module")
def fitted(world):
    image, text, _, ids = world
    out = {}
    for score in ("csls", "negclip"):
        scorer = MatchScorer(score=score, **SMALL).fit(image, text, ids)
        out[score] = (scorer, scorer.transform(image, text, ids))
    return out


def _ece(prob, clean, bins=10):
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    return sum(
        (idx == b).mean() * abs(prob[idx == b].mean() - clean[idx == b].mean())
        for b in range(bins)
        if (idx == b).any()
    )


@pytest.mark.parametrize("score", ["csls", "negclip"])
def test_separates_and_decides_sanely(world, fitted, score):
    _, _, noisy, _ = world
    scorer, cols = fitted[score]
    assert set(cols) == set(COLUMNS)
    assert cols["match_keep"].dtype == bool
    assert roc_auc_score(~noisy, cols["match_score"]) > 0.985
    keep = cols["match_keep"]
    # the default rule aims at 97.5% of the noise caught, estimated without labels
    assert (~keep[noisy]).mean() > 0.96  # noise caught
    assert keep[~noisy].mean() > 0.90  # clean kept
    # kept rows score above dropped ones: the decision is a cut on the score
    assert cols["match_score"][keep].min() >= cols["match_score"][~keep].max()


@pytest.mark.parametrize("score", ["csls", "negclip"])
def test_calibrated_and_noise_share(world, fitted, score):
    _, _, noisy, _ = world
    scorer, cols = fitted[score]
    prob = cols["match_clean_prob"].astype(np.float64)
    assert 0.0 <= prob.min() and prob.max() <= 1.0
    assert _ece(prob, ~noisy) < 0.05
    assert abs(scorer.calibration["pi"] - NOISE) < 0.05
    # more probable clean never means a lower score
    order = np.argsort(cols["match_score"])
    assert np.all(np.diff(prob[order]) >= -1e-6)


def test_row_order_does_not_matter(world, fitted):
    image, text, _, ids = world
    scorer, cols = fitted["csls"]
    perm = np.random.default_rng(3).permutation(N)
    other = MatchScorer(score="csls", **SMALL).fit(image[perm], text[perm], ids[perm])
    assert other.get_params() == scorer.get_params()
    out = other.transform(image[perm], text[perm], ids[perm])
    np.testing.assert_allclose(out["match_score"], cols["match_score"][perm], atol=1e-5)
    assert np.mean(out["match_keep"] == cols["match_keep"][perm]) > 0.999


def test_params_round_trip(world, fitted):
    image, text, _, ids = world
    scorer, cols = fitted["negclip"]
    params = json.loads(json.dumps(scorer.get_params()))
    arrays = {k: v.copy() for k, v in scorer.get_arrays().items()}
    again = MatchScorer.from_params(params, arrays).transform(image, text, ids)
    for name in COLUMNS:
        np.testing.assert_array_equal(again[name], cols[name])
    # the pool can also be rebuilt from row ids alone
    mask = pool_mask(ids, params["settings"]["seed"], int(params["pool"]["hash_max"]))
    assert set(ids[mask]) == set(arrays["pool_row_ids"])


def _tiny(seed=0, n=40, d=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = x + rng.normal(size=(n, d))
    unit = lambda a: (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)  # noqa: E731
    return unit(x), unit(y), np.arange(n, dtype=np.int64) * 7 + 3


def test_csls_matches_brute_force():
    x, y, ids = _tiny()
    k = 3
    scorer = MatchScorer(score="csls", k=k, pool_size=25, fit_size=40).fit(x, y, ids)
    pool_ids = scorer.get_arrays()["pool_row_ids"]
    pos = {int(r): i for i, r in enumerate(ids)}
    got = scorer.scores(x, y, ids)
    for i in range(len(x)):
        # the pool minus the pair's own row: its own text / image is no neighbour
        others = [pos[int(r)] for r in pool_ids if r != ids[i]]
        r_t = np.sort(x[i] @ y[others].T)[-k:].mean()
        r_i = np.sort(y[i] @ x[others].T)[-k:].mean()
        assert got[i] == pytest.approx(2 * float(x[i] @ y[i]) - r_t - r_i, abs=1e-5)


def test_negclip_matches_brute_force():
    x, y, ids = _tiny(1)
    tau = 0.1
    scorer = MatchScorer(score="negclip", pool_size=24, batch_size=8, temperature=tau, fit_size=40)
    scorer.fit(x, y, ids)
    pool_ids = scorer.get_arrays()["pool_row_ids"]
    pos = {int(r): i for i, r in enumerate(ids)}
    batches = np.array_split([pos[int(r)] for r in pool_ids], 3)
    got = scorer.scores(x, y, ids)
    for i in range(len(x)):
        norm = []
        for b in batches:
            # the batch with the pair itself in it, counted once
            members = sorted(set(b.tolist()) | {i})
            norm.append(logsumexp(x[i] @ y[members].T / tau) + logsumexp(y[i] @ x[members].T / tau))
        want = float(x[i] @ y[i]) - 0.5 * tau * np.mean(norm)
        assert got[i] == pytest.approx(want, abs=1e-4)


def test_bad_settings_and_unfitted():
    with pytest.raises(ValueError):
        MatchScorer(score="nope")
    with pytest.raises(ValueError):
        MatchScorer(alpha=1.5)
    with pytest.raises(RuntimeError):
        MatchScorer().transform(np.ones((2, 4), np.float32), np.ones((2, 4), np.float32))
    x, y, ids = _tiny()
    with pytest.raises(ValueError):
        MatchScorer().fit(x, y, np.zeros(len(x), dtype=np.int64))  # duplicate ids


@pytest.mark.parametrize("chunk", [None, 512])
def test_shards_scored_together_or_alone_agree(world, chunk, monkeypatch):
    """The local runner transforms several shards' prepared rows together
    (larger matrix products); a Ray task transforms one. Each row's columns
    must not depend on the rows it was batched with. ``chunk``: shards
    larger than one projection block (the rows are projected in blocks)."""
    if chunk is not None:
        monkeypatch.setattr("cleaner.methods.match.scorer._CHUNK", chunk)
    image, text, _, ids = world
    cuts = [slice(0, 700), slice(700, 2500), slice(2500, N)]
    for extra in ({}, {"exact_max": 256}):  # the pool compared in full, and in cells
        scorer = MatchScorer(score="csls", **SMALL, **extra).fit(image, text, ids)
        alone = [scorer.transform(image[c], text[c], ids[c]) for c in cuts]
        together = scorer.transform_prepared(
            [scorer.prepare(image[c], text[c], ids[c]) for c in cuts]
        )
        for a, b, c in zip(alone, together, cuts, strict=True):
            for col in COLUMNS:
                np.testing.assert_array_equal(a[col], b[col])
            score = scorer.scores(image[c], text[c], ids[c]).astype(np.float32)
            np.testing.assert_array_equal(a["match_score"], score)

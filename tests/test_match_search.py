"""match's CSLS search (projection + cells) and its ``caught`` keep rule:
exact where it claims to be, never above the exact neighbours where it is
approximate, and the rule's noise-caught target reached without labels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from cleaner.methods.match import calibrate
from cleaner.methods.match.scorer import MatchScorer
from cleaner.methods.match.search import PoolSearch, default_nlist, projection
from cleaner.worlds.synthetic import make_pair_mixture


def _unit(a):
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered():
    image, text, noisy = make_pair_mixture(6000, dim=64, noise_fraction=0.3, seed=3)
    return image, text, noisy


def _exact_top(q, pool, kk):
    return -np.sort(-(q @ pool.T), axis=1)[:, :kk]


def test_exact_search_is_brute_force(clustered):
    image, text, _ = clustered
    search = PoolSearch(text[:500], None, 1, 1, 0)
    got = search.top_values(search.project(image[:300]), 4)
    np.testing.assert_allclose(got, _exact_top(image[:300], text[:500], 4), atol=1e-5)
    # a pool smaller than k: the rest is -inf
    small = PoolSearch(text[:2], None, 1, 1, 0).top_values(image[:5], 4)
    assert np.isneginf(small[:, 2:]).all() and np.isfinite(small[:, :2]).all()


def test_cells_scanning_everything_are_exact(clustered):
    image, text, _ = clustered
    pool = text[:2048]
    nlist = default_nlist(len(pool))
    assert nlist > 1
    search = PoolSearch(pool, None, nlist, nlist, 0)  # every cell for every query
    got = search.top_values(image[:400], 4)
    np.testing.assert_allclose(got, _exact_top(image[:400], pool, 4), atol=1e-5)


def test_cells_never_exceed_exact_and_mostly_find_it(clustered):
    image, text, _ = clustered
    pool = text[:4096]
    search = PoolSearch(pool, None, default_nlist(len(pool)), 8, 0)
    got = search.top_values(image[:1000], 4)
    want = _exact_top(image[:1000], pool, 4)
    # an approximate j-th best can only be a worse row than the exact j-th
    assert np.all(got <= want + 1e-5)
    # CSLS's side statistic (mean of the top 3) follows the exact one
    r_got, r_want = got[:, :3].mean(1), want[:, :3].mean(1)
    assert np.corrcoef(r_got, r_want)[0, 1] > 0.7
    assert np.mean(r_want - r_got) < 0.05


def test_projection_keeps_inner_products_of_a_subspace():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(96, 12)))[0]
    x = _unit(rng.normal(size=(300, 12)) @ basis.T)
    y = _unit(rng.normal(size=(300, 12)) @ basis.T)
    assert projection(x, y, 96) is None  # nothing to reduce
    b = projection(x, y, 12)
    np.testing.assert_allclose((x @ b) @ (y @ b).T, x @ y.T, atol=1e-5)


def test_csls_through_cells_matches_brute_force():
    # cells over a pool that every query compares with in full: the score,
    # candidate exclusion by value included, is the brute-force CSLS
    rng = np.random.default_rng(1)
    x = _unit(rng.normal(size=(400, 8)))
    y = _unit(x + rng.normal(size=(400, 8)))
    ids = np.arange(400, dtype=np.int64) * 5 + 1
    k = 3
    nlist = default_nlist(300)
    scorer = MatchScorer(score="csls", k=k, pool_size=300, fit_size=400, exact_max=0,
                         nprobe=nlist).fit(x, y, ids)  # fmt: skip
    pool_ids = set(scorer.get_arrays()["pool_row_ids"].tolist())
    got = scorer.scores(x, y, ids)
    for i in range(0, 400, 7):
        others = [j for j in range(400) if ids[j] in pool_ids and j != i]
        r_t = np.sort(x[i] @ y[others].T)[-k:].mean()
        r_i = np.sort(y[i] @ x[others].T)[-k:].mean()
        assert got[i] == pytest.approx(2 * float(x[i] @ y[i]) - r_t - r_i, abs=1e-5)


def test_approximate_search_keeps_the_separation():
    image, text, noisy = make_pair_mixture(8000, dim=128, noise_fraction=0.3, seed=9)
    exact = MatchScorer(pool_size=6000, exact_max=10**6, search_dim=128).fit(image, text)
    fast = MatchScorer(pool_size=6000, search_dim=32).fit(image, text)
    assert fast.get_params()["settings"]["exact_max"] < 6000
    auc = [roc_auc_score(~noisy, s.scores(image, text)) for s in (exact, fast)]
    assert auc[1] > auc[0] - 0.003, auc


@pytest.mark.parametrize("target", [0.95, 0.99])
def test_caught_rule_reaches_its_target(target):
    # a score that separates poorly (AUROC ~0.89): the estimate of the noise
    # caught, not the score, is what is checked here, so the price is not capped
    image, text, noisy = make_pair_mixture(8000, dim=64, noise_fraction=0.4, seed=4)
    scorer = MatchScorer(pool_size=2048, noise_caught=target, max_cost=1.0).fit(image, text)
    cols = scorer.transform(image, text)
    keep = cols["match_keep"]
    caught = (~keep[noisy]).mean()
    assert caught >= target - 0.01, caught
    # the cut is on the score, and never below the balanced one
    s = cols["match_score"]
    assert s[keep].min() >= s[~keep].max()
    balanced = calibrate.keep_mask(scorer.calibration, s, cols["match_clean_prob"], "balanced")
    assert not np.any(keep & ~balanced)


def test_caught_rule_caps_its_price():
    # a score that separates poorly: 99% caught would cost most clean pairs,
    # so the cut stops where kept + caught is about max_cost below balanced's
    image, text, noisy = make_pair_mixture(8000, dim=64, noise_fraction=0.4, seed=4)
    sums = {}
    for name, caught in (("balanced", 0.0), ("capped", 0.99)):
        scorer = MatchScorer(pool_size=2048, noise_caught=caught).fit(image, text)
        keep = scorer.transform(image, text)["match_keep"]
        sums[name] = (keep[~noisy].mean(), (~keep[noisy]).mean())
    (k0, c0), (k1, c1) = sums["balanced"], sums["capped"]
    assert c1 >= c0 and k1 <= k0  # the cut rose ...
    assert c1 < 0.95 and (k1 + c1) > (k0 + c0) - 0.03, sums  # ... but not to any price


def test_caught_rule_at_zero_is_balanced(clustered):
    image, text, _ = clustered
    scorer = MatchScorer(pool_size=1024, noise_caught=0.0).fit(image, text)
    cols = scorer.transform(image, text)
    balanced = calibrate.keep_mask(scorer.calibration, cols["match_score"],
                                   cols["match_clean_prob"], "balanced")  # fmt: skip
    np.testing.assert_array_equal(cols["match_keep"], balanced)
    with pytest.raises(ValueError):
        MatchScorer(noise_caught=1.0)


def test_short_rows_get_the_same_leading_values(clustered):
    """Rows marked ``short`` (outside the pool: no own pair to skip) get the
    kk-1 largest values exactly as a full search gives them, the last -inf."""
    image, text, _ = clustered
    basis = projection(image[:2000], text[:2000], 32)
    search = PoolSearch(text[:2000], basis, default_nlist(2000), 4, 0)
    q = search.project(image[2000:3000])
    short = np.random.default_rng(0).random(len(q)) < 0.9
    full, part = search.top_values(q, 3), search.top_values(q, 3, short)
    np.testing.assert_array_equal(part[~short], full[~short])
    np.testing.assert_array_equal(part[short, :2], full[short, :2])
    assert np.isneginf(part[short, 2]).all()


def test_scores_with_and_without_the_short_path_agree(clustered):
    """transform (short rows for non-members) and scores (full search for all)
    give the same match_score, members of the pool included."""
    image, text, _ = clustered
    ids = np.arange(len(image), dtype=np.int64) * 3 + 1
    sc = MatchScorer(pool_size=1500, fit_size=2000, exact_max=256, search_dim=32)
    sc.fit(image, text, ids)
    members = sc.pool.index_of(ids) >= 0
    assert 0 < members.sum() < len(ids)
    got = sc.transform(image, text, ids)["match_score"]
    np.testing.assert_array_equal(got, sc.scores(image, text, ids).astype(got.dtype))


def test_duplicate_pool_rows_rank_the_same_in_any_batch():
    """Many tied candidates (web data repeats captions): each query's values
    are the same searched with the others or alone, and the true top values."""
    rng = np.random.default_rng(5)
    base = _unit(rng.normal(size=(300, 48)))
    pool = base[rng.integers(0, 300, 3000)]  # ~10 exact copies of each row
    search = PoolSearch(pool, projection(pool, pool, 24), default_nlist(3000), 4, 0)
    q = search.project(_unit(pool[:400] + 0.01 * rng.normal(size=(400, 48))))
    together = search.top_values(q, 3)
    alone = np.concatenate([search.top_values(q[i : i + 1], 3) for i in range(0, 400, 7)])
    np.testing.assert_array_equal(together[::7], alone)
    assert (together[:, 0] - together[:, 1] < 1e-5).mean() > 0.5  # ties: the exact path ran
    exact = -np.sort(-np.einsum("qd,pd->qp", q.astype(np.float64), search.proj), axis=1)
    assert (together <= exact[:, :3] + 1e-5).all()  # never above the true neighbours


def test_parts_projected_as_their_blocks_alone(clustered):
    """project_parts (the batch's rows of several shards, on threads) gives
    each row what project() gives it in its shard's own block, and the same
    cells as a search of those rows alone: a product's rounding of a row
    can depend on the rows beside it."""
    image, _, _ = clustered
    pool = image[:3000]
    search = PoolSearch(pool, projection(pool, pool, 24), default_nlist(len(pool)), 4, 0)
    parts = [image[3000:3001], image[3001:3700], image[3700:3700], image[3700:6000]]
    proj, cells = search.project_parts(parts, block=256)
    alone = [search.project(p[s : s + 256]) for p in parts for s in range(0, len(p), 256)]
    np.testing.assert_array_equal(proj, np.concatenate(alone))
    np.testing.assert_array_equal(cells, search._cells_parallel(proj))
    top = search.top_values(proj, 2, None, cells)
    np.testing.assert_array_equal(top, search.top_values(proj, 2))

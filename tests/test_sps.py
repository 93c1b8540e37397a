import json

import numpy as np
import pytest
from scipy.special import log_softmax

import cleaner.methods.sps.scorer as sps_module
from cleaner.methods.base import Pairs
from cleaner.methods.neighbors import NeighborIndex
from cleaner.methods.sps.scorer import SPSScorer, loss_batches


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _planted(n: int = 1000, d: int = 64, noise_frac: float = 0.2, seed: int = 0, spread=0.05):
    """Two well-separated clusters; a fraction of captions swapped across them."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 2, n)
    z = np.eye(d)[cluster] + spread * rng.normal(size=(n, d))
    image = _unit(z + 0.03 * rng.normal(size=(n, d)))
    text = _unit(z + 0.03 * rng.normal(size=(n, d)))
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.choice(n, int(noise_frac * n), replace=False)] = True
    partner = np.array([rng.choice(np.flatnonzero(cluster != c)) for c in cluster])
    text[noisy] = text[partner[noisy]]
    keys = np.array([f"s{i:05d}" for i in range(n)], dtype=object)
    row_ids = np.arange(n, dtype=np.int64) + 5_000  # job-wide ids, not positions
    return Pairs(image=image, text=text, keys=keys, row_ids=row_ids), noisy


def _reliable_index(scorer: SPSScorer, shards: list[tuple[Pairs, str]]) -> NeighborIndex:
    index = NeighborIndex(shards[0][0].image.shape[1])
    for pairs, name in shards:
        mask, match_prob = scorer.reference_rows(pairs, seed_key=name)
        index.add(
            pairs.image[mask], pairs.row_ids[mask], pairs.keys[mask], payload=match_prob[mask]
        )
    return index.finalize()


def _reference_stats(pairs: Pairs, batches, temperature=0.07):
    """Naive per-batch InfoNCE with scipy, as an independent check."""
    loss = np.zeros(len(pairs))
    y_hat = np.ones(len(pairs))
    for bt in batches:
        logits = pairs.image[bt].astype(np.float64) @ pairs.text[bt].T.astype(np.float64)
        logits /= temperature
        i2t = np.diag(log_softmax(logits, axis=1))
        t2i = np.diag(log_softmax(logits, axis=0))
        loss[bt] = -(i2t + t2i)
        y_hat[bt] = 0.5 * (np.exp(i2t) + np.exp(t2i))
    return loss, y_hat


def test_losses_match_naive_infonce_and_batching_is_seeded():
    pairs, _ = _planted(n=300)
    scorer = SPSScorer(batch_size=64)
    loss, y_hat = scorer.batch_stats(pairs, seed_key="shard-000")
    batches = loss_batches(len(pairs), 64, 0, "shard-000")
    assert sorted(len(b) for b in batches) == [44, 64, 64, 64, 64]
    ref_loss, ref_y = _reference_stats(pairs, batches)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_hat, ref_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scorer.per_sample_loss(pairs, "shard-000"), loss)
    # Another shard name shuffles differently; the same name reproduces.
    assert not np.array_equal(scorer.per_sample_loss(pairs, "shard-001"), loss)
    np.testing.assert_array_equal(
        SPSScorer(batch_size=64).per_sample_loss(pairs, "shard-000"), loss
    )


def test_one_row_tail_is_merged():
    batches = loss_batches(129, 128, 0, "x")
    assert [len(b) for b in batches] == [129]
    assert sorted(np.concatenate(batches).tolist()) == list(range(129))
    pairs, _ = _planted(n=129)
    assert np.all(SPSScorer().per_sample_loss(pairs, "x") > 0)
    single = pairs.subset(np.arange(1))
    loss, y_hat = SPSScorer().batch_stats(single)
    assert loss.tolist() == [0.0] and y_hat.tolist() == [1.0]


def test_planted_mismatches_are_noisy_and_matched_reliable():
    pairs, noisy = _planted()
    scorer = SPSScorer().fit(pairs, seed_key="fit")
    cols = scorer.transform(pairs, seed_key="fit")
    assert scorer.forced_noisy_threshold_ is None
    assert set(cols["sps_partition"][noisy]) == {"noisy"}
    assert set(cols["sps_partition"][~noisy]) == {"reliable"}
    p = cols["sps_clean_prob"]
    assert p.dtype == np.float32 and p[~noisy].min() > 0.99 and p[noisy].max() < 0.5
    np.testing.assert_array_equal(scorer.reference_mask(pairs, "fit"), ~noisy)
    assert cols["sps_loss"][noisy].min() > cols["sps_loss"][~noisy].max()


def test_proxy_keys_equal_brute_force_nearest_reliable_image():
    pairs, noisy = _planted(n=900, seed=1)
    shards = [(pairs.subset(np.arange(s, s + 300)), f"shard-{s}") for s in range(0, 900, 300)]
    scorer = SPSScorer().fit(np.concatenate([SPSScorer().per_sample_loss(p, k) for p, k in shards]))
    index = _reliable_index(scorer, shards)
    reliable = np.concatenate([scorer.reference_mask(p, k) for p, k in shards])
    match_prob = np.concatenate([scorer.reference_rows(p, k)[1] for p, k in shards])
    np.testing.assert_array_equal(reliable, ~noisy)
    pool = np.flatnonzero(reliable)
    for shard, name in shards:
        cols = scorer.transform(shard, index, seed_key=name)
        is_noisy = cols["sps_partition"] == "noisy"
        rows = shard.row_ids - 5_000  # positions in the full set
        sims = shard.image @ pairs.image[pool].T
        sims[pool[None, :] == rows[:, None]] = -np.inf
        best = pool[sims.argmax(axis=1)]
        np.testing.assert_array_equal(cols["sps_proxy_key"][is_noisy], pairs.keys[best[is_noisy]])
        assert all(k is None for k in cols["sps_proxy_key"][~is_noisy])
        # 'code' label: proxy pair's match probability x image cosine, 0 below 0.5.
        s = sims.max(axis=1)[is_noisy]
        expected = match_prob[best[is_noisy]] * s
        expected[expected < 0.5] = 0
        np.testing.assert_allclose(cols["sps_proxy_label"][is_noisy], expected, atol=1e-5)
        assert np.isnan(cols["sps_proxy_label"][~is_noisy]).all()
    # 'paper' label: 1 / (gamma + exp(-b * S)).
    paper = SPSScorer.from_params({**scorer.get_params(), "proxy_label": "paper", "b": 3.0})
    cols = paper.transform(shards[0][0], index, seed_key=shards[0][1])
    is_noisy = cols["sps_partition"] == "noisy"
    _, s, _ = index.search(shards[0][0].image[is_noisy], shards[0][0].row_ids[is_noisy])
    np.testing.assert_allclose(
        cols["sps_proxy_label"][is_noisy], 1 / (1 + np.exp(-3.0 * s[:, 0])), atol=1e-6
    )


def test_code_label_needs_payload():
    pairs, _ = _planted(n=300)
    scorer = SPSScorer().fit(pairs)
    index = NeighborIndex(pairs.image.shape[1])
    mask = scorer.reference_mask(pairs)
    index.add(pairs.image[mask], pairs.row_ids[mask], pairs.keys[mask])
    with pytest.raises(ValueError, match="payload"):
        scorer.transform(pairs, index)


def test_forcing_rule_when_all_look_clean(monkeypatch):
    pairs, _ = _planted(n=1000, noise_frac=0.0)
    # A two-component GMM almost never leaves every p above 0.5 on real
    # losses, so stand in a fit whose wide low-loss component dominates the
    # whole range: every pair then looks clean and the rule must fire.
    dominated = {"weights": [0.99, 0.01], "means": [0.3, 0.9], "variances": [0.25, 1e-3]}
    monkeypatch.setattr(sps_module, "fit_gmm_1d", lambda x, **kw: dict(dominated))
    scorer = SPSScorer().fit(pairs, seed_key="all-clean")
    cols = scorer.transform(pairs, seed_key="all-clean")
    p = cols["sps_clean_prob"]
    assert p.min() > 0.5
    assert scorer.forced_noisy_threshold_ == pytest.approx(np.sort(p)[len(p) // 100])
    forced = cols["sps_partition"] == "noisy"
    # Released rule: p <= sort(p)[n // 100], i.e. n // 100 + 1 rows here.
    assert forced.sum() == len(p) // 100 + 1
    assert p[forced].max() <= p[~forced].min()
    # The stored threshold survives a round trip and applies to other shards.
    again = SPSScorer.from_params(json.loads(json.dumps(scorer.get_params())))
    np.testing.assert_array_equal(
        again.transform(pairs, seed_key="all-clean")["sps_partition"], cols["sps_partition"]
    )


def test_soft_labels_for_quasi_rows():
    # Partially matched captions (a blend of the own and a foreign caption)
    # have losses between the two modes; some land between eps2 and eps1.
    pairs, noisy = _planted(n=1000, seed=2)
    rng = np.random.default_rng(12)
    blend = ~noisy & (rng.random(len(pairs)) < 0.3)
    a = rng.uniform(0.3, 0.7, (blend.sum(), 1))
    foreign = pairs.text[rng.choice(np.flatnonzero(noisy), blend.sum())]
    text = pairs.text.copy()
    text[blend] = _unit(a * text[blend] + (1 - a) * foreign)
    pairs = Pairs(image=pairs.image, text=text, keys=pairs.keys, row_ids=pairs.row_ids)
    scorer = SPSScorer().fit(pairs, seed_key="q")
    cols = scorer.transform(pairs, seed_key="q")
    quasi = cols["sps_partition"] == "quasi"
    assert quasi.sum() >= 3
    p, soft = cols["sps_clean_prob"], cols["sps_soft_label"]
    assert np.all((p[quasi] > 0.5) & (p[quasi] <= 0.99))
    _, y_hat = scorer.batch_stats(pairs, "q")
    np.testing.assert_allclose(soft[quasi], p[quasi] + (1 - p[quasi]) * y_hat[quasi], atol=1e-6)
    assert np.all(soft[quasi] >= p[quasi] - 1e-7) and np.all(soft[quasi] <= 1 + 1e-7)
    assert np.isnan(soft[~quasi]).all()


def test_deterministic_and_round_trip():
    pairs, _ = _planted(n=700, seed=2)
    runs = []
    for _ in range(2):
        scorer = SPSScorer(seed=3).fit(pairs, seed_key="s")
        index = _reliable_index(scorer, [(pairs, "s")])
        runs.append((scorer, scorer.transform(pairs, index, seed_key="s"), index))
    (s0, c0, index), (s1, c1, _) = runs
    assert s0.get_params() == s1.get_params()
    again = SPSScorer.from_params(json.loads(json.dumps(s0.get_params())))
    c2 = again.transform(pairs, index, seed_key="s")
    for name in c0:
        np.testing.assert_array_equal(c0[name], c1[name])
        np.testing.assert_array_equal(c0[name], c2[name])

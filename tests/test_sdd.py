import json

import numpy as np
import pytest

from cleaner.methods.base import Pairs
from cleaner.methods.neighbors import NeighborIndex
from cleaner.methods.sdd.scorer import SDDScorer


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _planted(n: int = 1000, d: int = 64, noise_frac: float = 0.2, seed: int = 0):
    """Two well-separated clusters; a fraction of captions swapped across them.

    Matched pairs have 100*s of about 90-98, mismatched about -20..17.
    """
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 2, n)
    z = np.eye(d)[cluster] + 0.05 * rng.normal(size=(n, d))
    image = _unit(z + 0.03 * rng.normal(size=(n, d)))
    text = _unit(z + 0.03 * rng.normal(size=(n, d)))
    noisy = np.zeros(n, dtype=bool)
    noisy[rng.choice(n, int(noise_frac * n), replace=False)] = True
    partner = np.array([rng.choice(np.flatnonzero(cluster != c)) for c in cluster])
    text[noisy] = text[partner[noisy]]
    keys = np.array([f"s{i:05d}" for i in range(n)], dtype=object)
    return Pairs(image=image, text=text, keys=keys), noisy


def _with_cosines(cos: np.ndarray, d: int = 16, seed: int = 0) -> Pairs:
    """Pairs whose row-wise cosines are exactly ``cos`` (up to float32)."""
    rng = np.random.default_rng(seed)
    u = _unit(rng.normal(size=(len(cos), d))).astype(np.float64)
    v = rng.normal(size=(len(cos), d))
    v = _unit(v - (v * u).sum(axis=1, keepdims=True) * u).astype(np.float64)
    return Pairs(image=u, text=cos[:, None] * u + np.sqrt(1 - cos[:, None] ** 2) * v)


def _memory_bank(pairs: Pairs, scorer: SDDScorer) -> tuple[NeighborIndex, NeighborIndex]:
    mask = scorer.reference_mask(pairs)
    image_index, text_index = (
        NeighborIndex(pairs.image.shape[1]),
        NeighborIndex(pairs.image.shape[1]),
    )
    for start in range(0, len(pairs), 256):  # streamed like shards
        block = pairs.subset(np.arange(start, min(start + 256, len(pairs))))
        m = mask[start : start + 256]
        image_index.add(block.image[m], block.row_ids[m], block.keys[m])
        text_index.add(block.text[m], block.row_ids[m], block.keys[m])
    return image_index.finalize(), text_index.finalize()


def _brute_force_keys(vectors: np.ndarray, pairs: Pairs, pool: np.ndarray) -> np.ndarray:
    sims = vectors @ vectors[pool].T
    sims[pool[None, :] == np.arange(len(pairs))[:, None]] = -np.inf  # self excluded
    return pairs.keys[pool[sims.argmax(axis=1)]]


def test_planted_mismatches_masks_and_weights():
    pairs, noisy = _planted()
    scorer = SDDScorer().fit(pairs)
    cols = scorer.transform(pairs)
    logits = 100 * pairs.cosine
    np.testing.assert_array_equal(cols["sdd_keep"], logits > 20)
    np.testing.assert_array_equal(cols["sdd_clean"], logits > 30)
    np.testing.assert_array_equal(cols["sdd_keep"], ~noisy)
    np.testing.assert_array_equal(cols["sdd_clean"], ~noisy)
    np.testing.assert_array_equal(scorer.reference_mask(pairs), ~noisy)
    w = cols["sdd_w_con"]
    assert w.dtype == np.float32 and w.min() >= 0 and w.max() <= 1
    assert w[~noisy].min() > 0.9 and w[noisy].max() < 0.1
    # Without indexes the memory-bank columns exist but are empty.
    assert cols["sdd_mb_image_key"].tolist() == [None] * len(pairs)
    assert cols["sdd_mb_text_key"].tolist() == [None] * len(pairs)


def test_memory_bank_equals_brute_force_over_clean_set():
    pairs, _ = _planted(n=800, seed=1)
    scorer = SDDScorer().fit(pairs)
    image_index, text_index = _memory_bank(pairs, scorer)
    cols = scorer.transform(pairs, image_index, text_index)
    pool = np.flatnonzero(scorer.reference_mask(pairs))
    img_keys = cols["sdd_mb_image_key"]
    txt_keys = cols["sdd_mb_text_key"]
    np.testing.assert_array_equal(img_keys, _brute_force_keys(pairs.image, pairs, pool))
    np.testing.assert_array_equal(txt_keys, _brute_force_keys(pairs.text, pairs, pool))
    assert not np.any(img_keys == pairs.keys) and not np.any(txt_keys == pairs.keys)
    assert set(img_keys) <= set(pairs.keys[pool])


def test_fit_on_sample_matches_full_fit_on_known_mixture():
    rng = np.random.default_rng(1)
    n = 20_000
    matched = rng.random(n) < 0.7
    logits = np.where(matched, rng.normal(32.0, 3.0, n), rng.normal(14.0, 4.0, n))
    pairs = _with_cosines(logits / 100)
    full = SDDScorer().fit(pairs)
    sample = np.sort(np.random.default_rng(0).choice(n, n // 5, replace=False))
    part = SDDScorer().fit(pairs.subset(sample))
    assert sorted(part.gmm_["means"]) == pytest.approx([14.0, 32.0], abs=0.5)
    a = full.transform(pairs)["sdd_w_con"]
    b = part.transform(pairs)["sdd_w_con"]
    assert np.abs(a - b).max() < 0.1  # worst case sits at the crossing, ~23
    assert np.abs(a - b).mean() < 0.005
    assert b.min() >= 0 and b.max() <= 1  # clipped: sample min/max are not global


def test_params_round_trip_gives_identical_columns():
    pairs, _ = _planted(n=600, seed=2)
    scorer = SDDScorer(alpha=25.0, beta_c=35.0, random_state=3).fit(pairs)
    image_index, text_index = _memory_bank(pairs, scorer)
    params = json.loads(json.dumps(scorer.get_params()))
    again = SDDScorer.from_params(params)
    assert again.get_params() == scorer.get_params()
    a = scorer.transform(pairs, image_index, text_index)
    b = again.transform(pairs, image_index, text_index)
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_two_runs_same_seed_identical():
    pairs, _ = _planted(n=600, seed=3)
    runs = []
    for _ in range(2):
        scorer = SDDScorer(random_state=5).fit(pairs)
        runs.append((scorer.get_params(), scorer.transform(pairs, *_memory_bank(pairs, scorer))))
    assert runs[0][0] == runs[1][0]
    for name in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name])


def test_transform_before_fit_raises():
    pairs, _ = _planted(n=50)
    with pytest.raises(RuntimeError):
        SDDScorer().transform(pairs)

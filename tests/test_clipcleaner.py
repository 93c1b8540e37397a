"""CLIPCleaner on planted embeddings whose zero-shot answer is known.

Class prompt embeddings are orthogonal unit vectors e_c; each image sits near
its true class's prompt; a known set of labels is flipped to another class.
Every selector should then keep exactly the unflipped rows.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from cleaner.estimator.prompts import IMAGENET_TEMPLATES, build_prompts, load_classes, load_prompts
from cleaner.methods.base import Pairs
from cleaner.methods.clipcleaner.scorer import (
    CLIPCleanerScorer,
    consistency_select,
    fallback_thresholds,
    gmm_clean_prob,
    gmm_select,
    label_quality,
    stratified_sample,
    zero_shot_probs,
)

K, D = 4, 16


def planted(n_per=40, flip_per=8, bad_class=None, n_bad=80, seed=0):
    """Planted data. Returns (pairs, prompt_emb, class_of_prompt, flipped, t).

    The first `flip_per` rows of each class get the next class's label.
    With `bad_class`, that class's prompt points *away* from its images
    ((-e_c + e_last) / sqrt 2), so zero-shot never agrees with its labels;
    its images carry a graded component t along e_last, so a larger t means
    a higher zero-shot p(label) -- a known best-to-worst order. No label is
    flipped into or out of the bad class.
    """
    rng = np.random.default_rng(seed)
    sizes = [n_bad if c == bad_class else n_per for c in range(K)]
    true = np.repeat(np.arange(K), sizes)
    prompts = np.eye(D)[:K].copy()
    x = np.eye(D)[true] + 0.1 * rng.normal(size=(len(true), D))
    t = np.zeros(len(true))
    if bad_class is not None:
        rows = true == bad_class
        t[rows] = rng.permutation(np.linspace(0.0, 0.6, rows.sum()))
        x[rows, D - 1] += t[rows]
        prompts[bad_class] = (-np.eye(D)[bad_class] + np.eye(D)[D - 1]) / np.sqrt(2)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    good = [c for c in range(K) if c != bad_class]
    labels = true.copy()
    flipped = np.zeros(len(true), dtype=bool)
    for i, c in enumerate(good):
        rows = np.flatnonzero(true == c)[:flip_per]
        labels[rows] = good[(i + 1) % len(good)]
        flipped[rows] = True
    pairs = Pairs(image=x, text=x, labels=labels, row_ids=np.arange(len(true)) + 1000)
    return pairs, prompts, np.arange(K), flipped, t


def columns_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


# ----------------------------------------------------------------------------
# selectors on planted data


@pytest.mark.parametrize("estimator", ["zs", "ind"])
@pytest.mark.parametrize("selector", ["consistency", "gmm"])
def test_each_selector_alone_keeps_exactly_the_clean_rows(estimator, selector):
    pairs, prompts, cop, flipped, _ = planted()
    sc = CLIPCleanerScorer(K, estimators=(estimator,), selectors=(selector,))
    cols = sc.fit(pairs, prompts, cop).transform(pairs)
    np.testing.assert_array_equal(cols["cc_selected"], ~flipped)
    other = "zs" if estimator == "ind" else "ind"
    assert (cols[f"cc_pred_{other}"] == -1).all()  # unused estimator: null columns
    assert np.isnan(cols[f"cc_p_label_{other}"]).all()


def test_default_intersection_keeps_the_clean_rows_and_predicts_truth():
    pairs, prompts, cop, flipped, _ = planted()
    sc = CLIPCleanerScorer(K).fit(pairs, prompts, cop)
    cols = sc.transform(pairs)
    np.testing.assert_array_equal(cols["cc_selected"], ~flipped)
    true = np.repeat(np.arange(K), 40)
    np.testing.assert_array_equal(cols["cc_pred_zs"], true)
    np.testing.assert_array_equal(cols["cc_pred_ind"], true)
    for e in ("zs", "ind"):
        np.testing.assert_array_equal(cols[f"cc_consistency_{e}"], ~flipped)
        assert (cols[f"cc_gmm_clean_prob_{e}"][~flipped] >= 0.5).all()
        assert (cols[f"cc_gmm_clean_prob_{e}"][flipped] < 0.5).all()
    # label quality ranks every clean row above every flipped row
    assert cols["cc_label_quality"][~flipped].min() > cols["cc_label_quality"][flipped].max()
    assert (
        sc.get_params()["fit_selected_per_class"]
        == np.bincount(pairs.labels[cols["cc_selected"]], minlength=K).tolist()
    )


def test_union_contains_intersection():
    pairs, prompts, cop, _, _ = planted(flip_per=14)
    inter = CLIPCleanerScorer(K).fit(pairs, prompts, cop).transform(pairs)["cc_selected"]
    union = (CLIPCleanerScorer(K, combine="union").fit(pairs, prompts, cop).transform(pairs))[
        "cc_selected"
    ]
    assert (union >= inter).all() and union.sum() >= inter.sum()


def test_functional_selectors_match_planted_truth():
    pairs, prompts, cop, flipped, _ = planted()
    p = zero_shot_probs(pairs.image, prompts, cop)
    np.testing.assert_array_equal(consistency_select(p, pairs.labels, 0.8), ~flipped)
    np.testing.assert_array_equal(gmm_select(p, pairs.labels, 0.5, random_state=0), ~flipped)
    q = label_quality(p, pairs.labels)
    np.testing.assert_allclose(q, p[np.arange(len(p)), pairs.labels])
    # theta = 1.0 means "the label is the arg-max"
    np.testing.assert_array_equal(
        consistency_select(p, pairs.labels, 1.0), p.argmax(1) == pairs.labels
    )


# ----------------------------------------------------------------------------
# empty-class fallback


def test_fallback_refills_an_empty_class_with_its_best_rows():
    bad = 3
    pairs, prompts, cop, flipped, t = planted(bad_class=bad)
    sc = CLIPCleanerScorer(K).fit(pairs, prompts, cop)
    cols = sc.transform(pairs)
    rows = np.flatnonzero(pairs.labels == bad)
    # no row of the bad class is zero-shot consistent, so without the
    # fallback the intersection would leave it empty
    assert not cols["cc_consistency_zs"][rows].any()
    assert set(sc.get_params()["fallback"]["thresholds"]) == {str(bad)}

    # m = max(smallest non-empty class count, N / K^2) = max(32, 200 // 16)
    others = [c for c in range(K) if c != bad]
    smallest = min(int(cols["cc_selected"][pairs.labels == c].sum()) for c in others)
    m = max(smallest, len(pairs) // K**2)
    assert m == 32
    chosen = cols["cc_selected"][rows]
    assert chosen.sum() == m

    # the best rows by zero-shot p(label | x), not the worst
    p_label = cols["cc_p_label_zs"][rows]
    assert p_label[chosen].min() > p_label[~chosen].max()
    assert t[rows][chosen].mean() > t[rows][~chosen].mean() + 0.2
    # the other classes are untouched: still exactly their clean rows
    good = pairs.labels != bad
    np.testing.assert_array_equal(cols["cc_selected"][good], ~flipped[good])


def test_fallback_thresholds_pick_top_m_and_keep_ties():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1, -1])
    selected = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
    scores = np.array([0, 0, 0, -5, -1, -3, -2, -4, 9], dtype=float)
    thr = fallback_thresholds(scores, labels, selected, n_classes=2)
    assert list(thr) == [1]
    # m = max(2 (class 0), int(8 / 4) = 2) -> the two best of class 1: -1, -2
    assert -3 < thr[1] < -2
    ties = np.array([0, 0, 0, -1, -1, -1, -3, -4, 9], dtype=float)
    thr = fallback_thresholds(ties, labels, selected, n_classes=2)
    assert thr[1] == -1  # three rows tie at the 2nd best: all kept by >=


# ----------------------------------------------------------------------------
# zero-shot aggregation


def test_prompt_sum_boosts_classes_with_more_prompts_mean_does_not():
    e = np.eye(D)
    prompts = np.stack([e[0], e[0], e[0], e[1], e[2]])  # class 0 has 3 prompts
    cop = np.array([0, 0, 0, 1, 2])
    x = (e[0] + e[1])[None] / np.sqrt(2)  # equally close to classes 0 and 1
    a = np.exp((1 / np.sqrt(2)) / 0.07)
    p_sum = zero_shot_probs(x, prompts, cop, aggregate="sum")[0]
    p_mean = zero_shot_probs(x, prompts, cop, aggregate="mean")[0]
    np.testing.assert_allclose(p_sum, np.array([3 * a, a, 1]) / (4 * a + 1), rtol=1e-12)
    np.testing.assert_allclose(p_mean, np.array([a, a, 1]) / (2 * a + 1), rtol=1e-12)
    assert p_sum[0] / p_sum[1] == pytest.approx(3.0)


def test_zero_shot_is_stable_at_tiny_temperature():
    pairs, prompts, cop, _, _ = planted()
    p = zero_shot_probs(pairs.image, prompts, cop, temperature=1e-4)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(1), 1.0)


def test_zero_shot_needs_a_prompt_per_class():
    with pytest.raises(ValueError, match="without prompts"):
        zero_shot_probs(np.eye(3), np.eye(3)[:2], np.array([0, 2]))


# ----------------------------------------------------------------------------
# GMM edge cases


def test_gmm_abstains_on_tiny_or_constant_classes():
    p = np.array([[0.9, 0.1, 0.0], [0.5, 0.5, 0.0], [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]])
    labels = np.array([0, 1, 1, -1])  # class 0: one row; class 1: constant
    prob = gmm_clean_prob(p, labels)
    np.testing.assert_array_equal(prob[:3], 1.0)
    assert np.isnan(prob[3])
    np.testing.assert_array_equal(gmm_select(p, labels), [True, True, True, False])


# ----------------------------------------------------------------------------
# invalid labels, persistence, determinism, sampling


def test_invalid_labels_are_not_fitted_and_get_nulls():
    pairs, prompts, cop, flipped, _ = planted()
    labels = pairs.labels.copy()
    bad = np.arange(0, len(labels), 7)
    labels[bad] = -1
    noisy = Pairs(image=pairs.image, text=pairs.text, labels=labels, row_ids=pairs.row_ids)
    sc = CLIPCleanerScorer(K).fit(noisy, prompts, cop)
    cols = sc.transform(noisy)
    assert (cols["label"][bad] == -1).all()
    for e in ("zs", "ind"):
        assert (cols[f"cc_pred_{e}"][bad] == -1).all()
        assert np.isnan(cols[f"cc_p_label_{e}"][bad]).all()
        assert np.isnan(cols[f"cc_gmm_clean_prob_{e}"][bad]).all()
        assert not cols[f"cc_consistency_{e}"][bad].any()
    assert not cols["cc_selected"][bad].any()
    assert np.isnan(cols["cc_label_quality"][bad]).all()
    # the unlabelled rows did not enter the fit at all
    ok = labels >= 0
    ref = CLIPCleanerScorer(K).fit(noisy.subset(ok), prompts, cop)
    assert ref.get_params() == sc.get_params()
    np.testing.assert_array_equal(cols["cc_selected"][ok], ~flipped[ok])


@pytest.mark.parametrize("induced", ["oof", "in-sample"])
def test_params_round_trip_through_json(induced):
    pairs, prompts, cop, _, _ = planted(bad_class=3)
    sc = CLIPCleanerScorer(K, induced=induced).fit(pairs, prompts, cop)
    params = json.loads(json.dumps(sc.get_params()))
    oof = None if sc.oof_ is None else {k: v.copy() for k, v in sc.oof_.items()}
    again = CLIPCleanerScorer.from_params(params, oof=oof)
    assert again.get_params() == sc.get_params()
    # shard by shard equals all at once
    half = len(pairs) // 2
    idx = np.arange(len(pairs))
    parts = [again.transform(pairs.subset(i)) for i in (idx[:half], idx[half:])]
    joined = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    assert columns_equal(joined, sc.transform(pairs))


def test_oof_transform_refuses_without_the_table():
    pairs, prompts, cop, _, _ = planted()
    sc = CLIPCleanerScorer(K).fit(pairs, prompts, cop)
    restored = CLIPCleanerScorer.from_params(sc.get_params())
    with pytest.raises(ValueError, match="out-of-fold table"):
        restored.transform(pairs)
    assert columns_equal(restored.transform(pairs, oof=sc.oof_), sc.transform(pairs))


def test_oof_rows_use_out_of_fold_probabilities():
    pairs, prompts, cop, flipped, _ = planted()
    oof = CLIPCleanerScorer(K, estimators=("ind",)).fit(pairs, prompts, cop)
    ins = CLIPCleanerScorer(K, estimators=("ind",), induced="in-sample").fit(pairs, prompts, cop)
    a, b = oof.transform(pairs), ins.transform(pairs)
    # a flipped row's own label props it up in-sample, not out of fold
    assert a["cc_p_label_ind"][flipped].mean() < b["cc_p_label_ind"][flipped].mean()
    assert (a["cc_p_label_ind"][flipped] < b["cc_p_label_ind"][flipped]).mean() > 0.8
    # and a row unknown to the table (new row id) gets the all-rows model
    fresh = Pairs(
        image=pairs.image, text=pairs.text, labels=pairs.labels, row_ids=pairs.row_ids + 10**6
    )
    np.testing.assert_array_equal(oof.transform(fresh)["cc_p_label_ind"], b["cc_p_label_ind"])


def test_fit_is_deterministic():
    pairs, prompts, cop, _, _ = planted(flip_per=14, bad_class=3)
    a = CLIPCleanerScorer(K, max_fit_samples=150, seed=3).fit(pairs, prompts, cop)
    b = CLIPCleanerScorer(K, max_fit_samples=150, seed=3).fit(pairs, prompts, cop)
    assert json.dumps(a.get_params()) == json.dumps(b.get_params())
    assert all(np.array_equal(a.oof_[k], b.oof_[k], equal_nan=True) for k in a.oof_)
    assert columns_equal(a.transform(pairs), b.transform(pairs))


def test_max_fit_samples_fits_a_stratified_sample_and_transforms_all():
    pairs, prompts, cop, flipped, _ = planted()
    sc = CLIPCleanerScorer(K, max_fit_samples=60).fit(pairs, prompts, cop)
    assert sc.get_params()["n_fit"] == 60 == len(sc.oof_["row_ids"])
    assert np.bincount(sc.oof_["labels"], minlength=K).min() >= 14
    cols = sc.transform(pairs)
    assert (cols["cc_selected"] == ~flipped).mean() > 0.95


def test_stratified_sample_counts():
    labels = np.array([0] * 90 + [1] * 9 + [2])
    idx = stratified_sample(labels, 20, seed=1)
    assert len(idx) == 20 and len(np.unique(idx)) == 20
    assert np.bincount(labels[idx]).tolist() == [18, 1, 1]
    np.testing.assert_array_equal(idx, stratified_sample(labels, 20, seed=1))
    with pytest.raises(ValueError):
        stratified_sample(labels, 2)


def test_rejects_bad_labels_and_settings():
    pairs, prompts, cop, _, _ = planted()
    bad = Pairs(image=pairs.image, text=pairs.text, labels=np.full(len(pairs), K))
    with pytest.raises(ValueError, match="outside"):
        CLIPCleanerScorer(K).fit(bad, prompts, cop)
    with pytest.raises(ValueError, match="prompt_emb"):
        CLIPCleanerScorer(K).fit(pairs)
    with pytest.raises(ValueError):
        CLIPCleanerScorer(K, estimators=("zs", "knn"))
    with pytest.raises(ValueError):
        CLIPCleanerScorer(K, combine="vote")


# ----------------------------------------------------------------------------
# prompts


def test_load_classes_text_and_json(tmp_path):
    (tmp_path / "c.txt").write_text("cat\n dog \nbird\n\n")
    assert load_classes(tmp_path / "c.txt") == ["cat", "dog", "bird"]
    (tmp_path / "c.json").write_text('["cat", "dog"]')
    assert load_classes(tmp_path / "c.json") == ["cat", "dog"]
    for name, text, match in [
        ("empty.txt", "\n\n", "no class names"),
        ("dup.txt", "cat\ndog\ncat\n", "duplicate class name 'cat'.*0 and 2"),
        ("gap.txt", "cat\n\ndog\n", "class 1 has an empty name"),
    ]:
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            load_classes(tmp_path / name)


def test_load_prompts_names_missing_classes(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"cat": ["a photo of a {}, a pet."], "extra": ["x"]}))
    with pytest.raises(ValueError, match="'dog'.*'bird'"):
        load_prompts(path, ["cat", "dog", "bird"])
    assert load_prompts(path, ["cat"]) == {"cat": ["a photo of a cat, a pet."]}


def test_build_prompts():
    texts, cls = build_prompts(["cat", "dog"])
    assert len(texts) == 2 * len(IMAGENET_TEMPLATES) == len(cls)
    assert "a photo of a dog." in texts and "a blurry photo of a cat." in texts
    assert cls.dtype == np.int64 and (np.bincount(cls) == len(IMAGENET_TEMPLATES)).all()
    texts, cls = build_prompts(["cat", "dog"], {"dog": ["woof"], "cat": ["meow", "purr"]})
    assert texts == ["meow", "purr", "woof"] and cls.tolist() == [0, 0, 1]
    texts, cls = build_prompts(["cat"], ["a {} here."])
    assert texts == ["a cat here."]

import numpy as np
import pytest

from cleaner.methods.neighbors import NeighborIndex, default_nlist, default_nprobe

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _random(n: int, seed: int = 0) -> np.ndarray:
    return _unit(np.random.default_rng(seed).normal(size=(n, DIM)))


def _clustered(n: int, n_clusters: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_clusters, DIM))
    return _unit(centers[rng.integers(0, n_clusters, n)] + 0.35 * rng.normal(size=(n, DIM)))


def _keys(row_ids: np.ndarray) -> np.ndarray:
    return np.array([f"key-{r}" for r in row_ids], dtype=object)


def _brute_force(queries, q_rids, base, b_rids):
    """Index into base of each query's best non-self match, and its score."""
    sims = queries @ base.T
    sims[q_rids[:, None] == b_rids[None, :]] = -np.inf
    best = sims.argmax(axis=1)
    return best, sims[np.arange(len(queries)), best]


def _build(x, row_ids, chunk=None, **kwargs) -> NeighborIndex:
    index = NeighborIndex(DIM, **kwargs)
    chunk = chunk or len(x)
    for start in range(0, len(x), chunk):
        sl = slice(start, start + chunk)
        index.add(x[sl], row_ids[sl], _keys(row_ids[sl]), payload=row_ids[sl] * 0.5)
    return index.finalize()


def test_exact_search_equals_brute_force_and_excludes_self():
    x = _random(3000)
    rids = np.arange(3000, dtype=np.int64) + 10_000  # ids unrelated to positions
    index = _build(x, rids)
    assert index.describe()["kind"] == "flat"
    keys, scores, found = index.search(x, rids, k=1)
    assert keys.shape == scores.shape == found.shape == (3000, 1)
    assert not np.any(found[:, 0] == rids)  # the query set is the indexed set
    best, best_score = _brute_force(x, rids, x, rids)
    np.testing.assert_allclose(scores[:, 0], best_score, atol=1e-5)
    # Keys agree except on float ties, where the scores must agree instead.
    differ = keys[:, 0] != _keys(rids[best])
    assert differ.sum() <= 2
    np.testing.assert_allclose(scores[differ, 0], best_score[differ], atol=1e-6)


def test_chunked_add_equals_one_shot_add():
    x = _random(2000, seed=1)
    rids = np.arange(2000, dtype=np.int64)
    one = _build(x, rids)
    chunked = _build(x, rids, chunk=333)
    q = _random(300, seed=2)
    for a, b in zip(one.search(q, None, k=3), chunked.search(q, None, k=3), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one.payload, chunked.payload)


def test_top_k_sorted_without_self_and_payload_lookup():
    x = _random(500, seed=3)
    rids = np.arange(500, dtype=np.int64)
    index = _build(x, rids)
    keys, scores, found = index.search(x[:50], rids[:50], k=4)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)
    assert not np.any(found == rids[:50, None])
    np.testing.assert_array_equal(index.payload_for(found), found * 0.5)
    assert np.isnan(index.payload_for(np.array([-1, 99_999]))).all()


def test_missing_neighbours_are_none_and_nan():
    empty = NeighborIndex(DIM).finalize()
    keys, scores, found = empty.search(_random(3), np.arange(3), k=1)
    assert keys.tolist() == [[None]] * 3 and np.isnan(scores).all() and (found == -1).all()
    # An index holding only the query itself has nothing left after exclusion.
    single = NeighborIndex(DIM)
    single.add(_random(1), np.array([7]), np.array(["only"], dtype=object))
    keys, scores, found = single.search(_random(1), np.array([7]), k=2)
    assert keys.tolist() == [[None, None]] and np.isnan(scores).all()
    with pytest.raises(RuntimeError):
        single.add(_random(1), np.array([8]), np.array(["late"], dtype=object))


def test_ivf_mode_recall_on_clustered_data():
    n = 6000
    x = _clustered(n)
    rids = np.arange(n, dtype=np.int64)
    index = _build(x, rids, chunk=1000, exact_threshold=500, expected_n=n, seed=0)
    info = index.describe()
    assert info["kind"] == "ivf"
    assert 1 < info["nlist"] <= default_nlist(n)
    assert info["nprobe"] == default_nprobe(info["nlist"]) < info["nlist"]  # really approximate
    sample = np.random.default_rng(0).choice(n, 1000, replace=False)
    recall = index.measure_recall(x[sample], k=1, query_row_ids=rids[sample])
    assert recall >= 0.9
    assert index.describe()["recall_at_1"] == recall
    # The measurement is not trivially 1: scanning a single list loses hits.
    index.set_nprobe(1)
    assert index.measure_recall(x[sample], k=1, query_row_ids=rids[sample]) < recall
    index.set_nprobe(default_nprobe(info["nlist"]))
    # Self-exclusion holds in IVF mode as well, and hits agree with brute force.
    _, scores, found = index.search(x[sample], rids[sample], k=1)
    assert not np.any(found[:, 0] == rids[sample])
    _, best_score = _brute_force(x[sample], rids[sample], x, rids)
    assert np.mean(np.isclose(scores[:, 0], best_score, atol=1e-5)) >= 0.9


def test_ivf_is_deterministic():
    x = _clustered(3000, seed=5)
    rids = np.arange(3000, dtype=np.int64)
    a = _build(x, rids, chunk=700, exact_threshold=300, seed=1)
    b = _build(x, rids, chunk=700, exact_threshold=300, seed=1)
    assert a.describe() == b.describe()
    for u, v in zip(a.search(x[:200], rids[:200]), b.search(x[:200], rids[:200]), strict=True):
        np.testing.assert_array_equal(u, v)

"""Bounded reference pools: seeded bottom-k samples by key, bounded memory,
recorded in the metadata; verdicts do not depend on the cap."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from cleaner.io import schema as S
from cleaner.methods.pools import MARGIN, PRUNE_FACTOR, PoolSampler
from cleaner.methods.sampling import as_uniform, base_hash, key_hash, key_uniform
from cleaner.worlds.synthetic import make_pair_mixture, write_embedding_dir


def _keys(n, prefix="k"):
    return np.array([f"{prefix}{i:07d}" for i in range(n)], dtype=object)


def test_key_hash_depends_on_the_key_only():
    keys = _keys(5000)
    perm = np.random.default_rng(0).permutation(len(keys))
    a = key_hash(keys, 3, "pool")
    np.testing.assert_array_equal(key_hash(keys[perm], 3, "pool"), a[perm])
    # an Arrow column (sliced, chunked) hashes like the Python strings
    col = pa.chunked_array([pa.array(list(keys[:2000])), pa.array(list(keys[2000:]))])
    np.testing.assert_array_equal(base_hash(col), base_hash(keys))
    np.testing.assert_array_equal(base_hash(pa.array(list(keys))[10:20]), base_hash(keys[10:20]))
    assert len(np.unique(a)) == len(keys)
    assert not np.array_equal(key_hash(keys, 4, "pool"), a)  # seeded
    assert not np.array_equal(key_hash(keys, 3, "other"), a)  # per purpose
    u = key_uniform(keys, 3, "pool")
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02


def _offer_all(sampler, keys, mask, chunk):
    prio = as_uniform(key_hash(keys, 0, "pool"))
    peak = 0
    for s in range(0, len(keys), chunk):
        sl = slice(s, s + chunk)
        rows = np.arange(len(keys))[sl]
        sampler.offer(mask[sl], prio[sl], s // chunk, rows - s, rows, keys[sl], payload=rows * 0.5)
        peak = max(peak, sampler._buffered)
    return prio, peak


@pytest.mark.parametrize("expected_factor", [1.0, 0.1, 3.0])  # fit's estimate right, low, high
def test_bottom_k_is_exact_order_free_and_bounded(expected_factor):
    n, size, chunk = 20_000, 500, 700
    keys = _keys(n)
    mask = np.random.default_rng(1).random(n) < 0.4
    qualifying = int(mask.sum())
    sampler = PoolSampler(size, int(expected_factor * qualifying))
    prio, peak = _offer_all(sampler, keys, mask, chunk)
    rows = sampler.result()
    want = np.flatnonzero(mask)[np.argsort(prio[mask], kind="stable")[:size]]
    if expected_factor <= 1.0:  # the fit did not overestimate: exactly the bottom-k
        assert len(rows) == size
        np.testing.assert_array_equal(rows.row_ids, want)  # canonical order: by priority
    else:  # overestimated past the margin: a smaller Bernoulli sample of the same rows
        assert 0 < len(rows) <= size and set(rows.row_ids) <= set(want)
    assert rows.qualifying == qualifying
    np.testing.assert_array_equal(rows.payload, rows.row_ids * 0.5)
    assert peak <= PRUNE_FACTOR * size + chunk  # memory bounded by the setting
    # same rows offered in another order and chunking: the same pool
    perm = np.random.default_rng(2).permutation(n)
    again = PoolSampler(size, int(expected_factor * qualifying))
    _offer_all(again, keys[perm], mask[perm], 333)
    np.testing.assert_array_equal(again.result().keys, rows.keys)


def test_small_pools_keep_every_qualifying_row():
    keys = _keys(300)
    mask = np.arange(300) % 3 == 0
    sampler = PoolSampler(1000, 100)
    _offer_all(sampler, keys, mask, 64)
    rows = sampler.result()
    assert sorted(rows.row_ids) == list(np.flatnonzero(mask))
    assert sampler.describe(len(rows)) == {
        "qualifying": 100, "pool_size": 1000, "sampled": False, "sampling_fraction": 1.0,
    }  # fmt: skip
    assert sampler.initial_threshold == 1.0 and MARGIN > 1


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    image, text, _ = make_pair_mixture(2400, dim=256, noise_fraction=0.3, n_clusters=24, seed=5)
    write_embedding_dir(root, image, text, shard_size=500)
    return root


def _score(root, out, *extra):
    run_cli("score", "--embeddings", root, "--out", out, "--beta-source", "shuffled",
            "--no-progress", *extra)  # fmt: skip
    return pq.read_table(out).to_pandas(), S.read_metadata(pq.read_schema(out))


def test_capped_pools_recorded_and_verdicts_unchanged(mixture, tmp_path):
    full, full_meta = _score(mixture, tmp_path / "full.parquet")
    capped, meta = _score(mixture, tmp_path / "cap.parquet", "--pool-size", "200")
    for name in ("sdd_image", "sdd_text", "sps_image"):
        info, whole = meta["neighbors"][name], full_meta["neighbors"][name]
        assert info["pool_size"] == 200 and info["ntotal"] == 200
        assert info["qualifying"] == whole["qualifying"] == whole["ntotal"] > 200
        assert info["sampled"] and info["sampling_fraction"] == pytest.approx(
            200 / whole["qualifying"]
        )
    # the verdicts never depend on the pools
    for col in ("sdd_keep", "sdd_w_con", "sdd_clean", "sps_loss", "sps_partition", "osa_weight"):
        assert (capped[col] == full[col]).all(), col
    # neighbour keys name real pool members: clean (reliable) rows, at most 200 of them
    clean_keys = set(full.key[full.sdd_clean])
    for col in ("sdd_mb_image_key", "sdd_mb_text_key"):
        named = set(capped[col].dropna())
        assert named <= clean_keys and len(named) <= 200
    reliable = set(full.key[full.sps_partition == "reliable"])
    assert set(capped.sps_proxy_key.dropna()) <= reliable
    # capped keys differ from the full pool's where the nearest row was left out
    assert (capped.sdd_mb_image_key != full.sdd_mb_image_key).any()


def test_pool_size_must_be_positive(mixture, tmp_path):
    proc = run_cli("score", "--embeddings", mixture, "--out", tmp_path / "x.parquet",
                   "--beta-source", "shuffled", "--pool-size", "0", check=False)  # fmt: skip
    assert proc.returncode == 2 and "--pool-size" in proc.stderr
    assert "Traceback" not in proc.stderr

"""SDD and SPS through the pipeline (embeddings input): global pools across
shards, fit on a sample, determinism."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from conftest import run_cli

from cleaner.worlds.synthetic import make_pair_mixture, write_embedding_dir


@pytest.fixture(scope="module")
def mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("emb")
    image, text, noisy = make_pair_mixture(3000, dim=256, noise_fraction=0.3, n_clusters=24, seed=3)
    write_embedding_dir(root, image, text, shard_size=700)
    return (
        root,
        image.astype(np.float16).astype(np.float32),
        text.astype(np.float16).astype(np.float32),
        noisy,
    )


def _score(root, out, *extra):
    run_cli(
        "score",
        "--embeddings",
        root,
        "--out",
        out,
        "--beta-source",
        "shuffled",
        "--no-progress",
        *extra,
    )
    return pq.read_table(out).to_pandas()


@pytest.fixture(scope="module")
def full(mixture, tmp_path_factory):
    return _score(mixture[0], tmp_path_factory.mktemp("full") / "w.parquet")


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_sdd_columns_follow_definitions(full, mixture):
    _, image, text, noisy = mixture
    logit = 100 * full.cosine.to_numpy()
    assert (full.sdd_keep.to_numpy() == (logit > 20)).all()
    assert (full.sdd_clean.to_numpy() == (logit > 30)).all()
    w = full.sdd_w_con.to_numpy()
    assert w.min() >= 0 and w.max() <= 1 and np.isclose(w.max(), 1) and np.isclose(w.min(), 0)
    # planted noise: low confidence, dropped
    from sklearn.metrics import roc_auc_score

    assert w[noisy].mean() < 0.3 and w[~noisy].mean() > 0.7
    # w_con is a monotone map of the cosine: it ranks pairs as well as the cosine does
    assert roc_auc_score(~noisy, w) >= roc_auc_score(~noisy, logit) - 0.005
    assert full.sdd_keep[noisy].mean() < 0.1 and full.sdd_keep[~noisy].mean() > 0.9


def test_memory_bank_is_global_nearest_clean_pair_self_excluded(full, mixture):
    _, image, text, _ = mixture
    image, text = _unit(image), _unit(text)
    clean = full.sdd_clean.to_numpy()
    keys = full.key.to_numpy()
    rng = np.random.default_rng(0)
    for i in rng.choice(len(full), 60, replace=False):
        for emb, col in ((image, "sdd_mb_image_key"), (text, "sdd_mb_text_key")):
            sims = emb[clean] @ emb[i]
            pool = np.flatnonzero(clean)
            sims[pool == i] = -np.inf
            assert full[col].iloc[i] == keys[pool[np.argmax(sims)]]


def test_sps_partition_and_proxies(full, mixture):
    _, image, _, noisy = mixture
    part = full.sps_partition.to_numpy()
    assert set(part) <= {"reliable", "quasi", "noisy"}
    assert (part[noisy] == "noisy").mean() > 0.85 and (part[~noisy] == "noisy").mean() < 0.1
    p = full.sps_clean_prob.to_numpy()
    assert (part[p > 0.99] != "noisy").all()
    reliable = np.flatnonzero(part == "reliable")
    image = _unit(image)
    keys = full.key.to_numpy()
    for i in np.flatnonzero(part == "noisy")[:40]:
        sims = image[reliable] @ image[i]
        assert full.sps_proxy_key.iloc[i] == keys[reliable[np.argmax(sims)]]
    assert full.sps_proxy_key[part != "noisy"].isna().all()
    soft = full.sps_soft_label.to_numpy()
    quasi = part == "quasi"
    assert np.isnan(soft[~quasi]).all()
    assert (soft[quasi] >= p[quasi] - 1e-6).all() and (soft[quasi] <= 1 + 1e-6).all()


def test_fit_on_sample_close_to_full_fit(full, mixture, tmp_path):
    sampled = _score(mixture[0], tmp_path / "s.parquet", "--fit-sample", "600")
    from cleaner.io import schema as S

    meta = S.read_metadata(pq.read_schema(tmp_path / "s.parquet"))
    assert (
        400 < meta["params"]["sdd"]["fit_rows"] < 800
        and meta["params"]["sdd"]["fit_rows_total"] == 3000
    )
    dw = np.abs(sampled.sdd_w_con.to_numpy() - full.sdd_w_con.to_numpy())
    assert dw.mean() < 0.02 and dw.max() < 0.25
    dp = np.abs(sampled.sps_clean_prob.to_numpy() - full.sps_clean_prob.to_numpy())
    assert dp.mean() < 0.05
    # the reliable/quasi cut sits at p = 0.99, in the posterior's steep tail, so it
    # moves with the fit; the noisy/not-noisy call must stay put
    agree = ((sampled.sps_partition == "noisy") == (full.sps_partition == "noisy")).mean()
    assert agree > 0.95
    assert (sampled.sdd_keep == full.sdd_keep).all()


def test_same_seed_same_columns(full, mixture, tmp_path):
    again = _score(mixture[0], tmp_path / "a.parquet")
    for col in full.columns:
        a, b = full[col].to_numpy(), again[col].to_numpy()
        same = (a == b) | (full[col].isna().to_numpy() & again[col].isna().to_numpy())
        assert same.all(), col


def test_ivf_path_records_recall(mixture, tmp_path):
    out = tmp_path / "ivf.parquet"
    _score(mixture[0], out, "--exact-threshold", "200", "--methods", "sdd")
    from cleaner.io import schema as S

    meta = S.read_metadata(pq.read_schema(out))
    desc = meta["neighbors"]["sdd_image"]
    assert desc["kind"] == "ivf" and desc["recall_at_1"] >= 0.9

"""Same samples, same verdicts, whatever their order.

img2dataset reorders samples within shards between two downloads; scoring
the same samples must then give the same columns row for row (joined on the
key): the SPS loss batches come from a hash of each sample's key, the fits
see their values sorted and draw their samples by key, the pools are
bottom-k samples by key, and the neighbour searches are batch-independent.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cleaner.io.embcache import EmbeddingCache
from cleaner.methods.base import Pairs
from cleaner.methods.gmm import fit_gmm_1d
from cleaner.methods.sps.scorer import SPSScorer
from cleaner.worlds.synthetic import make_pair_mixture, write_embedding_dir
from pipelines.score_job import ScoreJob, ScoreSettings, run_score


def _permuted_copy(src, dst, seed: int) -> None:
    """Every partition of ``src`` with its rows in another order, renumbered
    (as a second download would number them)."""
    cache, out = EmbeddingCache(src), EmbeddingCache(dst)
    rng = np.random.default_rng(seed)
    for stem in cache.stems():
        meta = pq.read_table(cache.meta_path(stem))
        img, txt = cache.open_vectors(stem)
        perm = rng.permutation(len(meta))
        meta = meta.take(pa.array(perm))
        meta = meta.set_column(
            meta.schema.get_field_index("index"), "index", pa.array(np.arange(len(meta)))
        )
        out.write(stem, meta, np.asarray(img)[perm], np.asarray(txt)[perm], cache.info(stem))


def _score(root, out, **settings):
    job = ScoreJob(
        out=str(out),
        embeddings=str(root),
        settings=ScoreSettings(methods=["osa", "sdd", "sps"], beta_source="shuffled", **settings),
        progress=False,
        argv=["test"],
    )
    run_score(job)
    return pq.read_table(out).to_pandas().set_index("key").sort_index()


@pytest.mark.parametrize(
    "n, shard, settings",
    [
        (150, 100, {}),  # small N: where the GMM's starting points used to decide
        (2400, 500, {"pool_size": 300, "exact_threshold": 100}),  # sampled pools, IVF
    ],
)
def test_permuted_rows_give_the_same_columns(tmp_path, n, shard, settings):
    image, text, _ = make_pair_mixture(n, dim=256, noise_fraction=0.3, n_clusters=24, seed=7)
    write_embedding_dir(tmp_path / "a", image, text, shard_size=shard)
    _permuted_copy(tmp_path / "a", tmp_path / "b", seed=1)
    a = _score(tmp_path / "a", tmp_path / "a.parquet", **settings)
    b = _score(tmp_path / "b", tmp_path / "b.parquet", **settings)
    assert len(a) == n and list(a.index) == list(b.index)
    assert (a.sps_partition == "reliable").sum() > 0
    for col in a.columns:
        if col in ("index",):  # the row's position in its shard: it moved
            continue
        x, y = a[col].to_numpy(), b[col].to_numpy()
        same = (x == y) | (a[col].isna().to_numpy() & b[col].isna().to_numpy())
        assert same.all(), f"{col}: {(~same).sum()} rows differ"


def test_gmm_fit_depends_on_values_not_order():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.2, 0.05, 40), rng.normal(0.6, 0.1, 60)])
    fits = [fit_gmm_1d(x[rng.permutation(len(x))]) for _ in range(5)]
    assert all(f == fits[0] for f in fits)


def test_key_batched_losses_follow_the_rows():
    image, text, _ = make_pair_mixture(700, dim=64, seed=2)
    keys = np.array([f"k{i}" for i in range(700)], dtype=object)
    pairs = Pairs(image, text, keys=keys)
    perm = np.random.default_rng(3).permutation(700)
    moved = Pairs(image[perm], text[perm], keys=keys[perm])
    scorer = SPSScorer(batch_by="key")
    loss, y_hat = scorer.batch_stats(pairs, "shard")
    loss2, y2 = scorer.batch_stats(moved, "shard")
    np.testing.assert_array_equal(loss2, loss[perm])
    np.testing.assert_array_equal(y2, y_hat[perm])
    # by position (the scorer's default, and what a stored fit without
    # batch_by replays), the same rows in another order get other batches
    by_pos = SPSScorer().batch_stats(moved, "shard")[0]
    assert not np.array_equal(by_pos, loss[perm])
    assert SPSScorer.from_params(SPSScorer(batch_by="key").fit(loss).get_params()).batch_by == "key"


def test_kept_views_and_streaming_give_the_same_columns(tmp_path, monkeypatch):
    """Small jobs keep their shards' views between passes; large ones read
    every shard again in each pass. Both must write the same sidecar (with
    match too: it batches shards and reads its fit rows by row id)."""
    import pipelines.fit_stage as fit_stage

    image, text, _ = make_pair_mixture(2400, dim=128, noise_fraction=0.3, n_clusters=24, seed=5)
    write_embedding_dir(tmp_path / "emb", image, text, shard_size=500)
    settings = {"pool_size": 300, "exact_threshold": 100,
                "options": {"match_pool_size": 600, "match_fit_size": 800}}  # fmt: skip

    def score(out):
        job = ScoreJob(out=str(out), embeddings=str(tmp_path / "emb"), progress=False,
                       argv=["test"], settings=ScoreSettings(
                           methods=["osa", "sdd", "sps", "match"], beta_source="shuffled",
                           **settings))  # fmt: skip
        run_score(job)
        return pq.read_table(out).to_pandas().set_index("key").sort_index()

    kept = score(tmp_path / "kept.parquet")
    monkeypatch.setattr(fit_stage, "KEEP_VIEWS_BYTES", 0)
    streamed = score(tmp_path / "streamed.parquet")
    assert len(kept) == 2400 and kept.match_keep.any() and not kept.match_keep.all()
    for col in kept.columns:
        x, y = kept[col].to_numpy(), streamed[col].to_numpy()
        same = (x == y) | (kept[col].isna().to_numpy() & streamed[col].isna().to_numpy())
        assert same.all(), f"{col}: {(~same).sum()} rows differ"

"""The ``match`` method through the score job: its columns in the sidecar,
its pool kept as a state file (a resumed job reuses it), and verdicts that do
not depend on the order of the rows within their shards."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from cleaner.io import schema as S
from cleaner.worlds.synthetic import make_pair_mixture, write_embedding_dir
from pipelines.score_job import ScoreJob, ScoreSettings, run_score

OPTIONS = {"match_pool_size": 512, "match_fit_size": 1024}


def _score(emb, out, **options):
    settings = ScoreSettings(methods=["osa", "match"], beta_source="shuffled",
                             options={**OPTIONS, **options})  # fmt: skip
    run_score(ScoreJob(out=str(out), embeddings=str(emb), settings=settings, progress=False))
    return pq.read_table(out)


@pytest.fixture(scope="module")
def data():
    return make_pair_mixture(3000, dim=64, noise_fraction=0.3, n_clusters=12, seed=5)


def test_match_columns_and_quality(data, tmp_path):
    image, text, noisy = data
    write_embedding_dir(tmp_path / "emb", image, text, shard_size=700)
    table = _score(tmp_path / "emb", tmp_path / "w.parquet")
    meta = S.validate(table.schema)
    assert meta["methods"] == ["osa", "match"]
    assert meta["params"]["match"]["pool"]["size"] == 512
    df = table.to_pandas()
    # the hub correction ranks at least as well as the raw cosine
    auc = roc_auc_score(~noisy, df.match_score)
    assert auc >= roc_auc_score(~noisy, df.cosine) - 0.005
    # the label-free keep flag is near the best cut on the same score (labels used
    # here only to check): clean kept + noise caught within 5 points of it
    keep = df.match_keep.to_numpy()
    got = keep[~noisy].mean() + (~keep[noisy]).mean()
    s = df.match_score.to_numpy()
    best = max(
        (s[~noisy] >= c).mean() + (s[noisy] < c).mean()
        for c in np.quantile(s, np.linspace(0, 1, 201))
    )
    assert got >= best - 0.05, (got, best)
    # the estimated noise share is near the planted one
    assert abs(meta["params"]["match"]["fit"]["pi"] - 0.3) < 0.05
    assert ((df.match_clean_prob >= 0) & (df.match_clean_prob <= 1)).all()


def test_match_does_not_depend_on_row_order(data, tmp_path):
    image, text, _ = data
    # same samples, each shard's rows in another order, keys kept
    perm = np.concatenate(
        [s + np.random.default_rng(s).permutation(1000) for s in range(0, 3000, 1000)]
    )
    keys = [f"{i // 1000:05d}_{i % 1000:06d}" for i in range(3000)]
    write_embedding_dir(tmp_path / "a", image, text, shard_size=1000, keys=keys)
    write_embedding_dir(tmp_path / "b", image[perm], text[perm], shard_size=1000,
                        keys=[keys[i] for i in perm])  # fmt: skip
    a = _score(tmp_path / "a", tmp_path / "a.parquet").to_pandas().set_index("key")
    b = _score(tmp_path / "b", tmp_path / "b.parquet").to_pandas().set_index("key")
    b = b.loc[a.index]
    for col in ("match_score", "match_clean_prob", "match_keep"):
        assert np.array_equal(a[col].to_numpy(), b[col].to_numpy()), col


def test_batches_finished_beside_the_main_thread(data, tmp_path, monkeypatch):
    """Full batches are finished on a thread while the next shards are
    scored, the last one in line: the sidecar is the one a single batch
    gives, and an error in a batch on that thread stops the job with it."""
    import threading

    from cleaner.methods.match.method import Match
    from cleaner.methods.match.scorer import MatchScorer

    image, text, _ = data
    write_embedding_dir(tmp_path / "emb", image, text, shard_size=400)
    one = _score(tmp_path / "emb", tmp_path / "one.parquet")
    monkeypatch.setattr(Match, "batch_rows", 800)  # 2 shards a batch: 3 finished aside
    seen = []
    real = MatchScorer.transform_prepared

    def spy(self, parts):
        seen.append(threading.current_thread().name)
        return real(self, parts)

    monkeypatch.setattr(MatchScorer, "transform_prepared", spy)
    many = _score(tmp_path / "emb", tmp_path / "many.parquet")
    assert sum(name.startswith("nclean-finish") for name in seen) == 3, seen
    for col in ("key", "match_score", "match_clean_prob", "match_keep", "osa_weight"):
        assert many.column(col).equals(one.column(col)), col

    def fail(self, parts):
        if threading.current_thread().name.startswith("nclean-finish"):
            raise RuntimeError("batch failed")
        return real(self, parts)

    monkeypatch.setattr(MatchScorer, "transform_prepared", fail)
    with pytest.raises(RuntimeError, match="batch failed"):
        _score(tmp_path / "emb", tmp_path / "failed.parquet")
    assert not any(t.name.startswith("nclean-finish") for t in threading.enumerate())


def test_blas_at_one_thread_through_fit_and_transform(data, tmp_path, monkeypatch):
    """match fits on a thread of its own and finishes batches on another;
    both limit BLAS, which is process-wide, so the stages hold it at one
    thread throughout: the mixture fits on the main thread (whose sums
    change with the count) always see one, and the caller's count is back
    after the job."""
    import threading

    from conftest import blas_threads as blas

    import cleaner.methods.sdd.scorer as sdd_scorer
    from cleaner.methods.match.method import Match
    from cleaner.methods.match.scorer import MatchScorer

    np.ones((4, 4)) @ np.ones((4, 4))
    before = blas()
    if before == {1}:
        pytest.skip("BLAS is at one thread already (one core)")
    seen: dict[str, list] = {"gmm": [], "finish": []}
    real_fit, real_finish = sdd_scorer.fit_gmm_1d, MatchScorer.transform_prepared

    def gmm_spy(*a, **k):
        seen["gmm"].append(blas())
        return real_fit(*a, **k)

    def finish_spy(self, parts):
        if threading.current_thread().name.startswith("nclean-finish"):
            seen["finish"].append(blas())
        return real_finish(self, parts)

    monkeypatch.setattr(sdd_scorer, "fit_gmm_1d", gmm_spy)
    monkeypatch.setattr(MatchScorer, "transform_prepared", finish_spy)
    monkeypatch.setattr(Match, "batch_rows", 800)
    image, text, _ = data
    write_embedding_dir(tmp_path / "emb", image, text, shard_size=400)
    settings = ScoreSettings(methods=["osa", "sdd", "match"], beta_source="shuffled",
                             options=OPTIONS)  # fmt: skip
    run_score(ScoreJob(out=str(tmp_path / "w.parquet"), embeddings=str(tmp_path / "emb"),
                       settings=settings, progress=False))  # fmt: skip
    assert seen["gmm"] and all(s == {1} for s in seen["gmm"]), seen
    assert seen["finish"] and all(s == {1} for s in seen["finish"]), seen
    assert blas() == before

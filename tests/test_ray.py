"""The Ray engine gives the same sidecars as the local engine."""

import json

import pyarrow.parquet as pq
import pytest
from conftest import TINY

from cleaner.io import schema as S
from pipelines.embed_job import EstimatorSpec
from pipelines.score_job import ScoreJob, ScoreSettings, run_score

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_session():
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


def _job(shard_dir, ckpt, out, engine):
    return ScoreJob(
        out=str(out),
        shards=[str(shard_dir)],
        estimator=EstimatorSpec(model=TINY, pretrained=str(ckpt), device="cpu"),
        settings=ScoreSettings(methods=["osa", "sdd", "sps"], beta_samples=16),
        workers=0,
        progress=False,
        engine=engine,
        argv=["test"],
    )


def _parts(out):
    return sorted(p.name for p in out.glob("*.parquet"))


def test_ray_matches_local(ray_session, shard_dir, tiny_ckpt, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "ray"
    run_score(_job(shard_dir, tiny_ckpt, local, "local"))
    summary = run_score(_job(shard_dir, tiny_ckpt, remote, "ray"))
    assert summary.parts_written == 3
    assert _parts(local) == _parts(remote) and len(_parts(local)) == 3
    for name in _parts(local):
        a, b = pq.read_table(local / name), pq.read_table(remote / name)
        assert a.equals(b), name  # values, types, row order
        assert S.read_metadata(a.schema) == S.read_metadata(b.schema)
    assert json.loads((local / "_nclean" / "fit.json").read_text()) == json.loads(
        (remote / "_nclean" / "fit.json").read_text()
    )
    # resume works the same way: a rerun on Ray is a no-op
    again = run_score(_job(shard_dir, tiny_ckpt, remote, "ray"))
    assert again.parts_written == 0 and again.parts_skipped == 3

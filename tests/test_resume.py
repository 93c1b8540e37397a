"""A job killed with SIGKILL and rerun gives the same rows and values."""

import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
from conftest import run_cli, tiny_args

from cleaner.io import schema as S
from cleaner.worlds import shapes


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory):
    out = tmp_path_factory.mktemp("many")
    data = shapes.generate(240, seed=5)
    data, _ = shapes.add_caption_noise(data, 0.4, seed=5)
    shapes.write_shards(data, out, shard_size=20, plant_corrupt=True)  # 12 shards + planted
    return out


def _args(shards, out, ckpt):
    return ["score", shards, "--out", out, *tiny_args(ckpt), "--beta-samples", "16"]


@pytest.fixture(scope="module")
def reference(many_shards, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "w.parquet"
    run_cli(*_args(many_shards, out, tiny_ckpt))
    return pq.read_table(out)


def _assert_same(a, b):
    assert a.num_rows == b.num_rows and a.column_names == b.column_names
    for name in a.column_names:
        assert a[name].equals(b[name]), name
    ma, mb = S.read_metadata(a.schema), S.read_metadata(b.schema)
    assert ma["fit_id"] == mb["fit_id"] and ma["params"] == mb["params"]


@pytest.mark.parametrize("kill_at", ["embed:3", "part:5"])
def test_sigkill_then_rerun_matches(kill_at, many_shards, tiny_ckpt, reference, tmp_path):
    out = tmp_path / "w.parquet"
    proc = run_cli(
        *_args(many_shards, out, tiny_ckpt), check=False, env={"NCLEAN_KILL_AT": kill_at}
    )
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    parts = list(out.with_suffix(".parts").glob("*.parquet"))
    assert len(parts) == (5 if kill_at.startswith("part") else 0)
    proc = run_cli(*_args(many_shards, out, tiny_ckpt))
    _assert_same(pq.read_table(out), reference)
    assert not list(out.with_suffix(".parts").rglob("*.tmp"))


def test_kill_from_outside_mid_embedding(many_shards, tiny_ckpt, reference, tmp_path):
    """A kill at a moment we do not choose: whenever the second partition lands."""
    out = tmp_path / "w.parquet"
    cmd = [
        sys.executable,
        "-c",
        "from cleaner.cli import main; main()",
        *map(str, _args(many_shards, out, tiny_ckpt)),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
    )
    meta_dir = out.with_suffix(".parts") / "_nclean" / "embeddings" / "metadata"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if meta_dir.is_dir() and len(list(meta_dir.glob("*.parquet"))) >= 2:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_cli(*_args(many_shards, out, tiny_ckpt))
    _assert_same(pq.read_table(out), reference)

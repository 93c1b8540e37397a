"""End to end through the CLI on generated shards with a tiny checkpoint."""

import json
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, run_cli, tiny_args

from cleaner.io import schema as S


def _expected_rows(shard_dir):
    """key -> planted kind (or None), from the generator's json members."""
    rows = {}
    for tar in sorted(shard_dir.glob("*.tar")):
        with tarfile.open(tar) as tf:
            keys = {m.name.split(".", 1)[0] for m in tf if m.isfile()}
            docs = {}
            for m in tf:
                if m.name.endswith(".json"):
                    docs[m.name.split(".", 1)[0]] = json.loads(tf.extractfile(m).read())
        for k in keys:
            rows[(tar.name, k)] = docs.get(k, {}).get("expected_status", "ok")
    return rows


@pytest.fixture(scope="module")
def scored(shard_dir, tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("scored") / "weights.parquet"
    proc = run_cli(
        "score",
        shard_dir,
        "--out",
        out,
        *tiny_args(tiny_ckpt, workers=1),
        "--uid-field",
        "uid",
        "--thresholds",  # the published constants (noise beta), which these tests check
        "paper",
    )
    return out, proc


def test_one_row_per_sample_with_statuses(scored, shard_dir):
    out, proc = scored
    table = pq.read_table(out)
    expected = _expected_rows(shard_dir)
    got = {
        (s, k): st
        for s, k, st in zip(
            table["shard"].to_pylist(), table["key"].to_pylist(), table["status"].to_pylist()
        )
    }
    assert len(table) == len(expected) == len(got)
    # label problems are not this command's business: those samples score fine
    expected = {k: ("ok" if v == "bad_label" else v) for k, v in expected.items()}
    assert got == expected
    assert "ok" in proc.stderr and "decode_error" in proc.stderr  # end-of-run summary


def test_schema_types_and_values(scored):
    out, _ = scored
    table = pq.read_table(out)
    meta = S.validate(table.schema)
    assert meta["schema_version"] == S.SCHEMA_VERSION and meta["methods"] == ["osa", "sdd", "sps"]
    assert meta["beta"]["source"] == "noise" and meta["beta"]["k"] == 64 and meta["beta"]["se"] > 0
    assert meta["estimator"]["model"] == TINY
    for name, typ in [
        ("key", pa.string()),
        ("index", pa.int64()),
        ("cosine", pa.float32()),
        ("osa_weight", pa.float32()),
    ]:
        assert table.schema.field(name).type == typ
    ok = np.array(table["status"].to_pylist()) == "ok"
    cos = table["cosine"].to_numpy(zero_copy_only=False)
    w = table["osa_weight"].to_numpy()
    assert np.all(np.isnan(cos[~ok])) and np.all(w[~ok] == 0)
    beta = meta["beta"]["value"]
    d = cos[ok] - beta
    np.testing.assert_allclose(w[ok], np.where(d > 0, d * d * (1 - d), 0), rtol=1e-5, atol=1e-7)
    # rows ordered by shard, then index
    order = list(zip(table["shard"].to_pylist(), table["index"].to_pylist()))
    assert order == sorted(order)
    uids = [u for u, s in zip(table["uid"].to_pylist(), table["status"].to_pylist()) if s == "ok"]
    assert all(uids)


def test_second_run_is_byte_identical_noop(scored, shard_dir, tiny_ckpt):
    out, _ = scored
    before = out.read_bytes()
    mtime = out.stat().st_mtime_ns
    proc = run_cli(
        "score",
        shard_dir,
        "--out",
        out,
        *tiny_args(tiny_ckpt, workers=1),
        "--uid-field",
        "uid",
        "--thresholds",
        "paper",
    )
    assert out.read_bytes() == before and out.stat().st_mtime_ns == mtime
    assert "parts written 0, reused 3" in proc.stderr and "unchanged" in proc.stderr


def test_embeddings_roundtrip_equals_direct(scored, tmp_path):
    out, _ = scored
    cache = out.with_suffix(".parts") / "_nclean" / "embeddings"
    again = tmp_path / "again"
    run_cli(
        "score", "--embeddings", cache, "--out", again, "--beta-source", "shuffled", "--no-progress"
    )
    direct = pq.read_table(out)
    via = pq.read_table(again)
    for col in ["key", "shard", "index", "status", "cosine"]:
        assert direct[col].equals(via[col]), col
    noise_beta = S.read_metadata(direct.schema)["beta"]["value"]
    # the same cosines under a given beta give the same weights
    fixed = tmp_path / "fixed"
    run_cli(
        "score", "--embeddings", cache, "--out", fixed, "--beta", str(noise_beta), "--no-progress"
    )
    np.testing.assert_array_equal(
        pq.read_table(fixed)["osa_weight"].to_numpy(), direct["osa_weight"].to_numpy()
    )


def test_noise_beta_with_embeddings_is_a_clear_error(scored, tmp_path):
    out, _ = scored
    cache = out.with_suffix(".parts") / "_nclean" / "embeddings"
    proc = run_cli(
        "score", "--embeddings", cache, "--out", tmp_path / "x", "--thresholds", "paper",
        check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "noise needs the model" in proc.stderr


def test_clip_retrieval_layout(tmp_path):
    """A folder as clip-retrieval writes it: numbered partitions, image_path/caption only."""
    rng = np.random.default_rng(0)
    root = tmp_path / "cr"
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    for n, rows in [(0, 30), (1, 20)]:
        img = rng.normal(size=(rows, 8)).astype(np.float32)
        txt = img + 0.3 * rng.normal(size=(rows, 8)).astype(np.float32)
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        if n == 1:
            img[3] = np.nan  # a broken vector becomes a status row
        np.save(root / "img_emb" / f"img_emb_{n}.npy", img.astype(np.float16))
        np.save(root / "text_emb" / f"text_emb_{n}.npy", txt.astype(np.float16))
        pq.write_table(
            pa.table({"image_path": [f"p{n}_{i}" for i in range(rows)], "caption": ["c"] * rows}),
            root / "metadata" / f"metadata_{n}.parquet",
        )
    out = tmp_path / "w.parquet"
    run_cli(
        "score", "--embeddings", root, "--out", out, "--beta-source", "shuffled", "--no-progress"
    )
    t = pq.read_table(out)
    assert (
        len(t) == 50 and t["key"][0].as_py() == "p0_0" and set(t["shard"].to_pylist()) == {"0", "1"}
    )
    statuses = t["status"].to_pylist()
    assert statuses.count("bad_embedding") == 1 and statuses[30 + 3] == "bad_embedding"
    assert np.nanmean(t["cosine"].to_numpy(zero_copy_only=False)) > 0.5


def test_clip_retrieval_mismatched_rows_is_clear_error(tmp_path):
    root = tmp_path / "cr"
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    np.save(root / "img_emb" / "img_emb_0.npy", np.ones((5, 4), np.float16))
    np.save(root / "text_emb" / "text_emb_0.npy", np.ones((4, 4), np.float16))
    pq.write_table(
        pa.table({"image_path": list("abcde")}), root / "metadata" / "metadata_0.parquet"
    )
    proc = run_cli(
        "score",
        "--embeddings",
        root,
        "--out",
        tmp_path / "o",
        "--beta",
        "0.1",
        "--no-progress",
        check=False,
    )
    assert (
        proc.returncode == 3
        and "row counts disagree" in proc.stderr
        and "Traceback" not in proc.stderr
    )


def test_configuration_errors_are_one_line(tmp_path, tiny_ckpt, shard_dir):
    cases = [
        (["score", tmp_path / "nope", "--out", tmp_path / "o"], "shard not found"),
        (
            [
                "score",
                shard_dir,
                "--out",
                tmp_path / "o",
                "--model",
                "ViT-S-32-alt",
                "--pretrained",
                tiny_ckpt,
            ],
            "does not fit model",
        ),
        (
            [
                "score",
                shard_dir,
                "--out",
                tmp_path / "o",
                "--model",
                TINY,
                "--pretrained",
                tmp_path / "missing.pt",
            ],
            "checkpoint not found",
        ),
        (["score", shard_dir, "--out", tmp_path / "o", "--methods", "osa,bogus"], "unknown method"),
    ]
    for args, needle in cases:
        proc = run_cli(*args, "--no-progress", check=False)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_unreadable_shard_is_named_and_rest_scored(tmp_path, shard_dir, tiny_ckpt):
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(sorted(shard_dir.glob("*.tar"))[0], d / "00000.tar")
    (d / "00001.tar").write_bytes(b"garbage, not a tar" * 100)
    (d / "00002.tar").write_bytes(b"")  # empty shard: zero rows, not an error
    proc = run_cli("score", d, "--out", tmp_path / "o.parquet", *tiny_args(tiny_ckpt), check=False)
    assert proc.returncode == 5 and "00001" in proc.stderr and "Traceback" not in proc.stderr
    assert len(pq.read_table(tmp_path / "o.parquet")) == 40
    # the README's advice: mend the shard and rerun -> the fit is redone over
    # all shards and every row is there exactly once
    shutil.copy(sorted(shard_dir.glob("*.tar"))[1], d / "00001.tar")
    proc = run_cli("score", d, "--out", tmp_path / "o.parquet", *tiny_args(tiny_ckpt), check=False)
    assert proc.returncode == 0, proc.stderr
    assert "fitting again" in proc.stderr
    t = pq.read_table(tmp_path / "o.parquet")
    pairs = list(zip(t["shard"].to_pylist(), t["key"].to_pylist()))
    assert len(t) == 80 and len(set(pairs)) == 80
    assert {s for s, _ in pairs} == {"00000.tar", "00001.tar"}


def test_nothing_scored_exits_nonzero(tmp_path, tiny_ckpt):
    from cleaner.worlds import shapes

    p = tmp_path / "bad.tar"
    shapes.write_corrupt_samples(p, kinds=["truncated_jpeg", "not_an_image", "empty_caption"])
    proc = run_cli("score", p, "--out", tmp_path / "o", *tiny_args(tiny_ckpt), check=False)
    assert proc.returncode == 4 and "nothing could be scored" in proc.stderr

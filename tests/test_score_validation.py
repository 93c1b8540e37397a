"""``nclean score``: stale inputs, option validation and what the user is told.

Each case here once went wrong silently (exit 0 with stale rows, a beta of
NaN, an internal error, an unhelpful message, a wrong exit code): see the
test names. CLI cases run the console entry point ``main()`` in-process
(the exit code and one-line message are what a user sees; a SIGALRM
deadline stands in for a timeout); the kill-and-resume case needs a real
subprocess.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_in_process, run_cli, tiny_args

from cleaner.errors import ConfigError, InputError, NothingScoredError
from cleaner.io import schema as S
from cleaner.methods.beta import sample_mismatched_indices, shuffled_beta
from cleaner.worlds import shapes

# -- helpers -----------------------------------------------------------------


_cli = cli_in_process


def _one_line_error(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert lines and lines[-1].startswith("nclean: error:"), err
    assert not any(line.startswith("nclean: error:") for line in lines[:-1]), err
    for needle in needles:
        assert needle in lines[-1], (needle, lines[-1])
    return lines[-1]


def _score_args(shards, out, ckpt, *extra):
    return ["score", shards, "--out", out, *tiny_args(ckpt), *extra]


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory) -> Path:
    """Shards with other content under the same names as ``shard_dir``'s."""
    out = tmp_path_factory.mktemp("other")
    data = shapes.generate(120, seed=2)
    shapes.write_shards(data, out, shard_size=40)
    return out


@pytest.fixture
def shards_copy(shard_dir, tmp_path) -> Path:
    d = tmp_path / "shards"
    shutil.copytree(shard_dir, d)
    return d


def _cosines(sidecar: Path, shard: str) -> list:
    t = pq.read_table(sidecar, columns=["shard", "cosine"])
    return [c for s, c in zip(t["shard"].to_pylist(), t["cosine"].to_pylist()) if s == shard]


# -- 1. a shard replaced under the same name ---------------------------------


def test_replaced_shard_is_refused_not_reused(
    shards_copy, other_shards, tiny_ckpt, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "w.parquet"
    args = _score_args(shards_copy, out, tiny_ckpt, "--methods", "osa")
    code, _ = _cli(monkeypatch, capsys, *args)
    assert code == 0
    before = out.read_bytes()
    old_cos = _cosines(out, "00001.tar")

    shutil.copyfile(other_shards / "00000.tar", shards_copy / "00001.tar")
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == ConfigError.exit_code == 2, err
    line = _one_line_error(err, "00001.tar", "--overwrite")
    assert "00000.tar" not in line and "00002.tar" not in line  # only the changed one
    assert out.read_bytes() == before  # nothing half-updated

    # the job's own record catches it too, when the embedding cache is gone
    shutil.rmtree(out.with_suffix(".parts") / "_nclean" / "embeddings")
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 2
    _one_line_error(err, "00001.tar", "changed", "--overwrite")

    # --overwrite redoes it: the rows are now the new file's
    code, err = _cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 0, err
    new_cos = _cosines(out, "00001.tar")
    assert len(new_cos) == 40 and new_cos != old_cos
    # and a rerun with nothing changed is a no-op again
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 0 and "(unchanged)" in err


def test_shard_changed_between_kill_and_resume(shards_copy, other_shards, tiny_ckpt, tmp_path):
    """Killed after the first shard's embeddings were cached; that shard is
    then replaced: the resume must not score the stale cached embeddings."""
    out = tmp_path / "w.parquet"
    args = _score_args(shards_copy, out, tiny_ckpt, "--methods", "osa")
    proc = run_cli(*args, check=False, env={"NCLEAN_KILL_AT": "embed:1"})
    assert proc.returncode == -signal.SIGKILL
    cached = out.with_suffix(".parts") / "_nclean" / "embeddings" / "metadata"
    assert sorted(p.name for p in cached.glob("*.parquet")) == ["metadata_00000.parquet"]
    shutil.copyfile(other_shards / "00001.tar", shards_copy / "00000.tar")  # embedded: stale
    shutil.copyfile(other_shards / "00000.tar", shards_copy / "00002.tar")  # not yet: fine
    proc = run_cli(*args, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    line = _one_line_error(proc.stderr, "00000.tar", "--overwrite")
    assert "00002.tar" not in line
    assert not out.exists()


def test_run_embed_fingerprint_check_and_old_caches(tmp_path):
    """Unit level, no model needed (every shard is already cached): a cache
    partition from before fingerprints were recorded is reused as before;
    one whose recorded fingerprint differs is refused."""
    from cleaner.estimator.embed import META_SCHEMA
    from cleaner.io.decode import SampleSpec
    from cleaner.io.embcache import EmbeddingCache
    from pipelines.embed_job import EstimatorSpec, cache_identity, file_fingerprint, run_embed

    shard = tmp_path / "a.tar"
    shard.write_bytes(b"\0" * 1024)
    est, spec = EstimatorSpec(model=TINY, pretrained="none"), SampleSpec()
    meta = pa.table(
        {
            "key": ["k"],
            "shard": ["a.tar"],
            "index": [0],
            "uid": [None],
            "status": ["ok"],
            "error": [None],
            "image_path": ["k"],
            "label": [None],
        },
        schema=META_SCHEMA,
    )
    vec = np.ones((1, 4), np.float16)
    cache = EmbeddingCache(tmp_path / "cache")
    info = {"identity": cache_identity(est, spec)}
    cache.write("a", meta, vec, vec, info)  # an old partition: no fingerprint
    assert run_embed([shard], cache, est, spec, progress=False).skipped == ["a"]
    cache.write("a", meta, vec, vec, {**info, "shard_fingerprint": file_fingerprint(shard)})
    assert run_embed([shard], cache, est, spec, progress=False).skipped == ["a"]
    shard.write_bytes(b"\0" * 2048)
    with pytest.raises(ConfigError, match=r"a\.tar \(size 1024 -> 2048 bytes\).*--overwrite"):
        run_embed([shard], cache, est, spec, progress=False)


def test_old_job_state_without_fingerprints_is_not_checked(tmp_path):
    from pipelines.layout import OutputLayout
    from pipelines.resume import refuse_changed as _refuse_changed

    layout = OutputLayout.from_out(tmp_path / "w.parquet")
    now = {"a": {"size": 2, "mtime_ns": 2}}
    _refuse_changed(layout, {"inputs": ["a"]}, now, {})  # old fit.json: no record, no check
    _refuse_changed(layout, {"fingerprints": {"a": {"size": 2, "mtime_ns": 2}}}, now, {})
    with pytest.raises(ConfigError, match="a.tar"):
        _refuse_changed(
            layout, {"fingerprints": {"a": {"size": 1, "mtime_ns": 2}}}, now, {"a": "a.tar"}
        )


# -- 2. beta < 0 is said -----------------------------------------------------


def test_negative_beta_warns_once(shard_dir, tiny_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "w.parquet"
    code, err = _cli(
        monkeypatch, capsys,
        *_score_args(shard_dir, out, tiny_ckpt, "--methods", "osa", "--thresholds", "paper"),
    )  # fmt: skip
    assert code == 0, err
    beta = S.read_metadata(pq.read_schema(out))["beta"]["value"]
    assert beta < 0  # the tiny random estimator's noise beta (checked, not assumed)
    warnings = [line for line in err.splitlines() if line.startswith("warning: beta")]
    assert len(warnings) == 1, err
    assert f"{beta:.4f}" in warnings[0] and "cosine > beta" in warnings[0]
    # a resumed (no-op) run says it again: the verdicts still need it
    code, err = _cli(
        monkeypatch, capsys,
        *_score_args(shard_dir, out, tiny_ckpt, "--methods", "osa", "--thresholds", "paper"),
    )  # fmt: skip
    assert code == 0 and sum(line.startswith("warning: beta") for line in err.splitlines()) == 1
    # a non-negative beta gives no such warning
    code, err = _cli(
        monkeypatch,
        capsys,
        *_score_args(
            shard_dir, tmp_path / "pos.parquet", tiny_ckpt, "--methods", "osa", "--beta", "0.05"
        ),
    )
    assert code == 0 and "warning: beta" not in err


# -- 3. option validation ----------------------------------------------------


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--beta", "nan"], "--beta must be a finite cosine"),
        (["--beta", "inf"], "--beta must be a finite cosine"),
        (["--beta", "-inf"], "--beta must be a finite cosine"),
        (["--beta", "1.5"], "--beta must be a finite cosine"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--batch-size", "-4"], "--batch-size must be at least 1"),
        (["--workers", "-1"], "--workers must be 0"),
        (["--beta", "0.1", "--beta-source", "shuffled"], "--beta-source shuffled would be ignored"),
        (["--beta", "0.1", "--beta-samples", "8"], "--beta-samples would be ignored"),
    ],
)
def test_bad_score_options_are_config_errors(
    extra, needle, shard_dir, tiny_ckpt, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "o.parquet"
    args = ["score", shard_dir, "--out", out, "--model", TINY, "--pretrained", tiny_ckpt]
    code, err = _cli(monkeypatch, capsys, *args, "--no-progress", *extra)
    assert code == ConfigError.exit_code == 2, err
    _one_line_error(err, needle)
    assert not out.with_suffix(".parts").exists()  # refused before any work


def test_explicit_beta_source_with_beta_is_an_error(shard_dir, tmp_path):
    """--beta with --beta-source given explicitly (even as the default, noise)
    is refused when the caller says it was explicit (see the report: the CLI
    must pass ScoreJob.beta_source_explicit)."""
    from pipelines.score_job import ScoreJob, ScoreSettings, run_score

    def job(explicit):
        return ScoreJob(
            out=str(tmp_path / "o"),
            shards=[str(shard_dir)],
            settings=ScoreSettings(beta=0.1),
            beta_source_explicit=explicit,
            progress=False,
        )

    with pytest.raises(ConfigError, match="--beta-source noise would be ignored"):
        run_score(job(True))
    assert not (tmp_path / "o").exists()


def test_missing_uid_field_warns_with_count(shard_dir, tiny_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "w.parquet"
    code, err = _cli(
        monkeypatch,
        capsys,
        *_score_args(shard_dir, out, tiny_ckpt, "--methods", "osa", "--uid-field", "nope"),
    )
    assert code == 0, err
    n = pq.read_metadata(out).num_rows
    assert pq.read_table(out, columns=["uid"])["uid"].null_count == n
    warnings = [line for line in err.splitlines() if "--uid-field" in line]
    assert len(warnings) == 1 and f"missing in {n} of {n} samples" in warnings[0], err
    # the real field: no warning, uids filled
    code, err = _cli(
        monkeypatch,
        capsys,
        *_score_args(
            shard_dir, tmp_path / "u.parquet", tiny_ckpt, "--methods", "osa", "--uid-field", "uid"
        ),
    )
    assert code == 0 and "--uid-field" not in err
    assert pq.read_table(tmp_path / "u.parquet", columns=["uid"])["uid"].null_count == 0


# -- 4. shuffled beta: K the data supports -----------------------------------


def test_shuffled_pairs_never_reuse_a_row():
    for sizes, k in [([120, 81], 10_000), ([5, 3, 7], 4), ([2], 10), ([1000], 300)]:
        i, j = sample_mismatched_indices(sizes, k, seed=1)
        n = sum(sizes)
        assert len(i) == len(j) == min(k, n)
        assert np.all(i != j) and len(set(i)) == len(i) and len(set(j)) == len(j)
        assert i.min() >= 0 and max(i.max(), j.max()) < n
        if 2 * k <= n:  # room for disjoint image and caption rows
            assert not set(i) & set(j)
        i2, j2 = sample_mismatched_indices(sizes, k, seed=1)
        assert (i == i2).all() and (j == j2).all()


def test_shuffled_beta_standard_error_is_honest():
    """201 rows, K=10,000 asked: K used is 201, and the reported se matches
    how much beta actually varies from one data set of 201 rows to the next.
    Rows have their own effects (some images / captions sit closer to
    everything), as real embeddings do; with pairs reused ~50 times the old
    se was ~5x too small."""
    rng = np.random.default_rng(0)
    dim, n = 16, 201
    values, ses = [], []
    for rep in range(300):
        g = rng.normal(1.0, 0.6, size=(n, 1))  # per-image effect
        h = rng.normal(1.0, 0.6, size=(n, 1))  # per-caption effect
        e = np.zeros(dim)
        e[0] = 1.0
        img = g * e + 0.5 * rng.normal(size=(n, dim))
        txt = h * e + 0.5 * rng.normal(size=(n, dim))
        img /= np.linalg.norm(img, axis=1, keepdims=True)
        txt /= np.linalg.norm(txt, axis=1, keepdims=True)
        b = shuffled_beta(img, txt, k=10_000, seed=rep)
        values.append(b.value)
        ses.append(b.se)
    ratio = np.std(values, ddof=1) / np.mean(ses)
    assert 0.8 < ratio < 1.25, ratio  # measured: 0.99 now, 4.8 with 10,000 reused pairs
    assert b.k == b.n_pairs == n  # the K used is recorded


def test_shuffled_beta_records_k_used(shard_dir, tiny_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "w.parquet"
    code, err = _cli(
        monkeypatch,
        capsys,
        *_score_args(shard_dir, out, tiny_ckpt, "--methods", "osa", "--beta-source", "shuffled"),
    )
    assert code == 0, err
    meta = S.read_metadata(pq.read_schema(out))
    ok = pq.read_table(out, columns=["status"])["status"].to_pylist().count("ok")
    assert meta["beta"]["k"] == meta["beta"]["n_pairs"] == ok < 10_000
    assert meta["beta"]["se"] == pytest.approx(meta["beta"]["std"] / np.sqrt(ok))
    assert f"K={ok}" in err


# -- 5. nothing scorable: say why --------------------------------------------


def test_nothing_scorable_names_statuses_and_keys(
    shard_dir, tiny_ckpt, tmp_path, monkeypatch, capsys
):
    code, err = _cli(
        monkeypatch,
        capsys,
        *_score_args(shard_dir, tmp_path / "w.parquet", tiny_ckpt, "--text-key", "caption"),
    )
    assert code == NothingScoredError.exit_code == 4
    line = _one_line_error(err, "nothing could be scored", "--text-key", "--image-key")
    m = re.search(r"(\d+) samples in 3 shards, none usable \(([^)]*)\)", line)
    assert m, line
    counts = {k: int(v) for v, k in (part.split() for part in m.group(2).split(", "))}
    assert sum(counts.values()) == int(m.group(1)) and counts["missing_text"] > 100


# -- 6. a folder of shards none of which opens ---------------------------------


def test_folder_of_unreadable_shards_is_unreadable_input(tiny_ckpt, tmp_path, monkeypatch, capsys):
    d = tmp_path / "junk"
    d.mkdir()
    for name in ("a.tar", "b.tar"):
        (d / name).write_bytes(b"this is not a tar file\n" * 10)
    code, err = _cli(monkeypatch, capsys, *_score_args(d, tmp_path / "w.parquet", tiny_ckpt))
    assert code == InputError.exit_code == 3, err
    _one_line_error(err, "no shard could be read", "a.tar", "b.tar")
    # a folder with no *.tar at all: the shard spec matches nothing, a
    # configuration error like a path that does not exist (exit 2)
    e = tmp_path / "notars"
    e.mkdir()
    (e / "readme.txt").write_text("x")
    code, err = _cli(monkeypatch, capsys, *_score_args(e, tmp_path / "v.parquet", tiny_ckpt))
    assert code == 2
    _one_line_error(err, "no *.tar files")


def test_fit_json_records_fingerprints(shard_dir, tiny_ckpt, tmp_path, monkeypatch, capsys):
    out = tmp_path / "w"
    code, err = _cli(
        monkeypatch, capsys, *_score_args(shard_dir, out, tiny_ckpt, "--methods", "osa")
    )
    assert code == 0, err
    fit = json.loads((out / "_nclean" / "fit.json").read_text())
    for stem in fit["inputs"]:
        st = (shard_dir / f"{stem}.tar").stat()
        assert fit["fingerprints"][stem] == {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def test_switching_input_kind_into_the_same_out_is_named(
    shards_copy, tiny_ckpt, tmp_path, monkeypatch, capsys
):
    """Scored from shards, then rerun on the job's own embeddings into the
    same --out: refused with a message that says why (not "changed")."""
    out = tmp_path / "w.parquet"
    extra = ("--methods", "osa", "--beta-source", "shuffled")
    code, err = _cli(monkeypatch, capsys, *_score_args(shards_copy, out, tiny_ckpt, *extra))
    assert code == 0, err
    emb = out.with_suffix(".parts") / "_nclean" / "embeddings"
    code, err = _cli(
        monkeypatch, capsys, "score", "--embeddings", emb, "--out", out, "--no-progress", *extra
    )
    assert code == 2
    _one_line_error(err, "another kind of input", "--overwrite")

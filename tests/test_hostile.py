"""Hostile inputs and hostile neighbours: each ends as a status row or a
one-line error with a documented exit code, and nothing is lost.

1. Member names that are not UTF-8 (latin-1 bytes, as old tar tools write
   them) used to kill ``nclean score`` with ``UnicodeEncodeError``; their
   key is now stored escaped (``caf\\xe9``) by both readers, and ``nclean
   filter`` finds the sample again by it.
2. Two jobs writing one ``--out`` at once used to read each other's half-
   written parts (``ZSTD decompression failed``); the second is now refused
   (exit 2, naming the first), and a lock left by a killed job is taken over.
3. ``nclean score shards/ --out shards/`` used to write its parts over
   img2dataset's ``00000.parquet``; a folder holding files nclean cannot
   prove it wrote is now refused, ``--overwrite`` included.
4. ``nclean train`` with NaN weights trained to ``train_loss: NaN`` and
   exited 0; NaN or negative weights are now refused (exit 2, naming the
   column and the count).
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_in_process, tiny_args
from PIL import Image

from cleaner.errors import ConfigError
from cleaner.io.shards import ShardReport, read_shard, sample_key
from cleaner.worlds import shapes
from pipelines.layout import LOCK_NAME, FolderLock

CAP = b"a red square"


def _jpeg(colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(path: Path, members: list[tuple[str, bytes]], **kw) -> Path:
    """A tar written as old tools do: names in latin-1 bytes, not UTF-8."""
    mode = "w:gz" if path.name.endswith(".gz") else "w"
    with tarfile.open(path, mode, format=tarfile.USTAR_FORMAT, encoding="latin-1", **kw) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _latin1_members(word: str = "caf\xe9", plain: str = "plain") -> list[tuple[str, bytes]]:
    return [
        (f"{word}.jpg", _jpeg()),
        (f"{word}.txt", CAP),
        (f"{plain}.jpg", _jpeg((30, 200, 30))),
        (f"{plain}.txt", b"a green square"),
    ]


def _cli(monkeypatch, capsys, *args):
    return cli_in_process(monkeypatch, capsys, *args, timeout=120)


def _one_line(err: str, *needles: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("WARNING:root:")]
    assert len(lines) == 1 and lines[0].startswith("nclean: error:"), err
    assert all(n in lines[0] for n in needles), err


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.iterdir())
        if p.is_file()
    }


# -- 1. member names that are not UTF-8 ------------------------------------------


def test_sample_key_escapes_undecodable_bytes_only():
    assert sample_key("plain/key") == "plain/key" and sample_key("café") == "café"
    escaped = sample_key(b"caf\xe9".decode("utf-8", "surrogateescape"))
    assert escaped == "caf\\xe9"
    assert sample_key(escaped) == escaped  # idempotent: a filtered copy keeps its key
    escaped.encode("utf-8")  # storable in Parquet


@pytest.mark.parametrize("name", ["a.tar", "a.tar.gz"])
def test_both_readers_key_latin1_names_alike(tmp_path, name):
    path = _tar(tmp_path / name, _latin1_members())
    report = ShardReport()
    samples = list(read_shard(path, report=report))
    assert [s.key for s in samples] == ["caf\\xe9", "plain"]
    assert [sorted(s.members) for s in samples] == [["jpg", "txt"], ["jpg", "txt"]]
    assert all(s.problem is None for s in samples) and not report.warnings


def test_latin1_names_score_and_filter_round_trip(tmp_path, tiny_ckpt, monkeypatch, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    tar = _tar(shards / "a.tar", _latin1_members())
    tgz = _tar(shards / "b.tar.gz", _latin1_members("\xfcber", "other"))
    out = tmp_path / "w.parquet"
    code, err = _cli(
        monkeypatch, capsys, "score", tar, tgz, "--out", out, *tiny_args(tiny_ckpt),
        "--beta-source", "shuffled",
    )  # fmt: skip
    assert code == 0, err
    w = pd.read_parquet(out)
    assert sorted(zip(w.shard, w.key, w.status)) == [
        ("a.tar", "caf\\xe9", "ok"),
        ("a.tar", "plain", "ok"),
        ("b.tar.gz", "\\xfcber", "ok"),
        ("b.tar.gz", "other", "ok"),
    ]
    # nclean filter finds every sample again by its stored key
    clean = tmp_path / "clean"
    code, err = _cli(
        monkeypatch, capsys, "filter", tar, tgz, "--weights", out, "--where", "status == 'ok'",
        "--out", clean, "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    names = [m.name for t in sorted(clean.glob("*.tar")) for m in tarfile.open(t)]
    assert {"caf\\xe9.jpg", "\\xfcber.txt"} <= set(names) and len(names) == 8
    # the weights API: webdataset's __key__ (surrogate-escaped) maps to the stored key
    from cleaner.train.weights import Verdicts

    v = Verdicts.load(out)
    wds_key = b"caf\xe9".decode("utf-8", "surrogateescape")
    rows = v.lookup(["a.tar"], [sample_key(wds_key)])
    assert int(rows[0]) >= 0


def test_shard_file_name_not_utf8_is_one_line(tmp_path, tiny_ckpt, monkeypatch, capsys):
    shards = tmp_path / "shards"
    shards.mkdir()
    bad = os.fsdecode(b"sh\xe9rd.tar")
    _tar(shards / bad, _latin1_members())
    code, err = _cli(
        monkeypatch, capsys, "score", shards, "--out", tmp_path / "w", *tiny_args(tiny_ckpt)
    )
    assert code == 2
    _one_line(err, "sh\\xe9rd.tar", "not valid UTF-8")


# -- 2. one job per output folder --------------------------------------------------


@pytest.fixture
def small(tmp_path) -> Path:
    d = tmp_path / "shards"
    d.mkdir()
    for i in range(2):
        _tar(d / f"{i:05d}.tar", [(f"k{j}.{e}", _jpeg() if e == "jpg" else CAP)
                                  for j in range(3) for e in ("jpg", "txt")])  # fmt: skip
    return d


def test_second_job_on_a_locked_out_is_refused(small, tmp_path, tiny_ckpt, monkeypatch, capsys):
    out = tmp_path / "w"
    out.mkdir()
    held = FolderLock(out, "--out")
    held.acquire()
    try:
        args = ("score", small, "--out", out, *tiny_args(tiny_ckpt), "--beta-source", "shuffled")
        code, err = _cli(monkeypatch, capsys, *args)
        assert code == ConfigError.exit_code == 2
        _one_line(err, "in use by another nclean job", f"pid {os.getpid()}", "started")
        assert not list(out.glob("*.parquet"))  # refused before any work
        emb = tmp_path / "emb"
        emb.mkdir()
        held_emb = FolderLock(emb, "--out")
        held_emb.acquire()
        code, err = _cli(monkeypatch, capsys, "embed", small, "--out", emb, *tiny_args(tiny_ckpt))
        held_emb.release()
        assert code == 2
        _one_line(err, "in use by another nclean job")
    finally:
        held.release()
    code, err = _cli(monkeypatch, capsys, *args)  # released: the job runs
    assert code == 0, err
    assert len(pd.read_parquet(out)) == 6  # the lock file does not disturb readers


def test_lock_of_a_killed_job_is_taken_over(small, tmp_path, tiny_ckpt, monkeypatch, capsys):
    out = tmp_path / "w"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pipelines.layout import FolderLock; "
         f"FolderLock({str(out)!r}, '--out').acquire(); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline().strip() == "held"
    args = ("score", small, "--out", out, *tiny_args(tiny_ckpt), "--beta-source", "shuffled")
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 2
    _one_line(err, "in use by another nclean job", f"pid {holder.pid}")
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert f'"pid": {holder.pid}' in (out / LOCK_NAME).read_text()  # stale: its pid is dead
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert len(pd.read_parquet(out)) == 6


def _job(shards: Path, out: Path, ckpt: Path, **settings):
    from pipelines.embed_job import EstimatorSpec
    from pipelines.score_job import ScoreJob, ScoreSettings

    return ScoreJob(
        out=str(out),
        shards=[str(shards)],
        estimator=EstimatorSpec(model=TINY, pretrained=str(ckpt), device="cpu"),
        settings=ScoreSettings(**settings),
        workers=0,
        progress=False,
    )


def test_two_jobs_started_together(small, tmp_path, tiny_ckpt):
    """The issue: two runs into one --out with different settings. One
    finishes; the other is refused with a ConfigError (in use, or: results
    made with other settings if it started after the first ended), never an
    internal error, and the finished output reads back whole."""
    from concurrent.futures import ThreadPoolExecutor

    from pipelines.score_job import run_score

    out = tmp_path / "w.parquet"
    jobs = [
        _job(small, out, tiny_ckpt, beta_source="shuffled"),
        _job(small, out, tiny_ckpt, beta=0.1),
    ]

    def run(job):
        try:
            return run_score(job)
        except ConfigError as exc:
            return exc

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(run, jobs))
    refused = [r for r in results if isinstance(r, ConfigError)]
    assert len(refused) == 1, results
    assert "in use by another nclean job" in str(refused[0]) or "other settings" in str(refused[0])
    assert len(pq.read_table(out)) == 6


# -- 3. never overwrite a file nclean did not write --------------------------------


def _img2dataset_folder(folder: Path) -> Path:
    folder.mkdir()
    _tar(folder / "00000.tar", [("k.jpg", _jpeg()), ("k.txt", CAP)])
    pd.DataFrame({"key": ["k"], "url": ["http://x/k.jpg"]}).to_parquet(folder / "00000.parquet")
    (folder / "00000_stats.json").write_text("{}")
    return folder


def test_out_into_the_shard_folder_is_refused(tmp_path, tiny_ckpt, monkeypatch, capsys):
    shards = _img2dataset_folder(tmp_path / "shards")
    before = _digests(shards)
    common = (*tiny_args(tiny_ckpt), "--beta-source", "shuffled")
    for out, extra in (
        (shards, ()),
        (shards, ("--overwrite",)),
        (shards / "00000.parquet", ()),
        (shards / "00000.parquet", ("--overwrite",)),
    ):
        code, err = _cli(monkeypatch, capsys, "score", shards, "--out", out, *common, *extra)
        assert code == 2, (out, extra, err)
        _one_line(err, "not written by nclean" if out.suffix else "did not write")
        assert _digests(shards) == before and sorted(p.name for p in shards.iterdir()) == sorted(
            before
        )


def test_own_folder_reruns_and_overwrites(small, tmp_path, tiny_ckpt, monkeypatch, capsys):
    out = tmp_path / "w"
    args = ("score", small, "--out", out, *tiny_args(tiny_ckpt), "--beta-source", "shuffled")
    assert _cli(monkeypatch, capsys, *args)[0] == 0
    assert _cli(monkeypatch, capsys, *args)[0] == 0  # its own parts: resumed
    assert _cli(monkeypatch, capsys, *args, "--overwrite")[0] == 0
    assert len(pd.read_parquet(out)) == 6
    # a stranger's file dropped into the folder: refused, and left alone
    (out / "notes.parquet").write_bytes(b"not nclean's")
    code, err = _cli(monkeypatch, capsys, *args, "--overwrite")
    assert code == 2 and (out / "notes.parquet").read_bytes() == b"not nclean's"
    _one_line(err, "notes.parquet")


def test_embed_into_a_clip_retrieval_folder_is_refused(
    small, tmp_path, tiny_ckpt, monkeypatch, capsys
):
    emb = tmp_path / "emb"
    for sub in ("img_emb", "text_emb", "metadata"):
        (emb / sub).mkdir(parents=True)
    np.save(emb / "img_emb" / "img_emb_00000.npy", np.ones((3, 4), np.float16))
    np.save(emb / "text_emb" / "text_emb_00000.npy", np.ones((3, 4), np.float16))
    pq.write_table(
        pa.table({"image_path": ["a", "b", "c"]}), emb / "metadata" / "metadata_00000.parquet"
    )
    before = {p: p.read_bytes() for p in emb.rglob("*") if p.is_file()}
    code, err = _cli(
        monkeypatch, capsys, "embed", small, "--out", emb, *tiny_args(tiny_ckpt), "--overwrite"
    )
    assert code == 2
    _one_line(err, "did not write", "metadata_00000.parquet")
    assert {p: p.read_bytes() for p in emb.rglob("*") if p.is_file()} == before


# -- 4. NaN or negative training weights -------------------------------------------


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_ckpt):
    root = tmp_path_factory.mktemp("hostile_train")
    data = shapes.generate(40, seed=3)
    shapes.write_shards(data, root / "shards", shard_size=20)
    out = root / "w.parquet"
    from pipelines.score_job import run_score

    run_score(_job(root / "shards", out, tiny_ckpt, beta_samples=8))
    return root / "shards", out


def _with_column(src: Path, dst: Path, name: str, values: np.ndarray) -> Path:
    t = pq.read_table(src)
    i = t.column_names.index(name)
    t = t.set_column(i, t.schema.field(name), pa.array(values, t.schema.field(name).type))
    pq.write_table(t, dst)
    return dst


@pytest.mark.parametrize(
    "column,form,values,needle",
    [
        ("osa_weight", "paper", {0: np.nan, 1: np.nan, 2: -1.0}, "2 missing/NaN, 1 negative"),
        ("osa_weight_norm", "paper-norm", {3: np.inf}, "1 infinite"),
        ("cosine", "code", {0: np.nan}, "1 missing/NaN"),
    ],
)
def test_nan_or_negative_weights_are_refused(
    scored, tiny_ckpt, tmp_path, monkeypatch, capsys, column, form, values, needle
):
    shards, sidecar = scored
    col = pq.read_table(sidecar)[column].to_numpy(zero_copy_only=False).astype(np.float64)
    for i, v in values.items():
        col[i] = v
    bad = _with_column(sidecar, tmp_path / "bad.parquet", column, col)
    code, err = _cli(
        monkeypatch, capsys, "train", shards, "--sidecar", bad, "--method", "osa",
        "--osa-form", form, "--out", tmp_path / "run", "--model", TINY, "--pretrained",
        tiny_ckpt, "--max-steps", "1", "--batch-size", "8", "--no-progress",
    )  # fmt: skip
    assert code == 2, err
    _one_line(err, f"sidecar column {column}", needle)
    assert not (tmp_path / "run" / "last.pt").exists()


def test_unscored_rows_get_weight_zero_with_a_count(capsys):
    from cleaner.train.sidecar import checked_weights

    side = pd.DataFrame(
        {
            "shard": ["a.tar"] * 4,
            "key": list("abcd"),
            "status": ["ok", "decode_error", "ok", "ok"],
            "w": [0.5, np.nan, 1.0, np.nan],
        }
    )
    w = checked_weights(side, "w", np.array([0, 1, 2]), "osa")  # row 3 not trained on
    assert w[:3].tolist() == [0.5, 0.0, 1.0] and np.isnan(w[3])
    assert "1 training row(s) whose status is not ok" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="1 missing/NaN value"):
        checked_weights(side, "w", np.array([0, 3]), "osa")

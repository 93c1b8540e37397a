"""Sidecars scored from precomputed embeddings reach the shards they came from.

End to end on tiny generated shards: ``nclean embed`` -> ``nclean score
--embeddings`` -> ``nclean filter`` / ``keep_where`` / the trainer's join,
for nclean's own embedding folder and for the folder ``clip-retrieval
inference --enable_metadata`` writes over img2dataset shards (its partitions
span shards and carry img2dataset's own columns, ``status = "success"``
among them). Also: NaN rows in a cache stay out of beta, a metadata file
that is not Parquet is exit 3 naming it, ambiguous keys are a one-line error
naming them, and a filter that keeps nothing is an error, not an empty output.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from conftest import cli_in_process, tiny_args

from cleaner.errors import InputError
from cleaner.io.embcache import EmbeddingCache, sample_join
from cleaner.train.lookup import AmbiguousKeyError, SidecarMismatchError
from cleaner.train.weights import Verdicts, attach_weights, keep_where
from cleaner.worlds import shapes

# exactly what clip-retrieval's metadata holds with --enable_metadata over img2dataset shards
IMG2DATASET_COLUMNS = [
    "image_path",
    "caption",
    "url",
    "key",
    "status",
    "error_message",
    "width",
    "height",
    "original_width",
    "original_height",
    "exif",
    "sha256",
]


def _cli(monkeypatch, capsys, *args):
    return cli_in_process(monkeypatch, capsys, *args)


def _meta(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"nclean"])


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_ckpt):
    """Two shapes-world shards (20 samples each) and ``nclean embed``'s folder of them."""
    root = tmp_path_factory.mktemp("ej")
    data = shapes.generate(40, seed=7)
    data, _ = shapes.add_caption_noise(data, 0.3, seed=7)
    shapes.write_shards(data, root / "shards", shard_size=20)
    mp = pytest.MonkeyPatch()
    try:
        import sys

        from cleaner.cli import main

        mp.setattr(
            sys, "argv", ["nclean", "embed", str(root / "shards"), "--out", str(root / "emb"),
                          *tiny_args(tiny_ckpt)],
        )  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code in (0, None)
    finally:
        mp.undo()
    return root


def clip_retrieval_folder(emb: Path, out: Path, keys=None, uids=None) -> Path:
    """nclean's embeddings rewritten as clip-retrieval writes them over
    img2dataset shards: one partition spanning every shard, img2dataset's
    columns in the metadata, float16 vectors, no nclean marker."""
    cache = EmbeddingCache(emb)
    stems = cache.stems()
    img = np.concatenate([np.load(cache.img_path(s)) for s in stems]).astype(np.float16)
    txt = np.concatenate([np.load(cache.text_path(s)) for s in stems]).astype(np.float16)
    own = pa.concat_tables([pq.read_table(cache.meta_path(s)) for s in stems])
    keys = own.column("key").to_pylist() if keys is None else keys
    n = len(keys)
    meta = {
        "image_path": keys,
        "caption": ["a caption"] * n,
        "url": [f"https://example.com/{k}.jpg" for k in keys],
        "key": keys,
        "status": ["success"] * n,
        "error_message": [None] * n,
        "width": [64] * n,
        "height": [64] * n,
        "original_width": [64] * n,
        "original_height": [64] * n,
        "exif": ["{}"] * n,
        "sha256": ["0" * 64] * n,
    }
    table = pa.table(meta)
    assert table.column_names == IMG2DATASET_COLUMNS
    if uids is not None:
        table = table.append_column("uid", pa.array(uids, pa.string()))
    for sub in ("img_emb", "text_emb", "metadata"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    np.save(out / "img_emb" / "img_emb_0.npy", img)
    np.save(out / "text_emb" / "text_emb_0.npy", txt)
    pq.write_table(table, out / "metadata" / "metadata_0.parquet")
    return out


def _score(monkeypatch, capsys, emb: Path, out: Path, *extra):
    return _cli(
        monkeypatch, capsys, "score", "--embeddings", emb, "--out", out,
        "--beta-source", "shuffled", "--methods", "osa", "--no-progress", *extra,
    )  # fmt: skip


def _filter(monkeypatch, capsys, shards: Path, weights: Path, out: Path, *extra):
    return _cli(
        monkeypatch, capsys, "filter", shards, "--weights", weights, "--out", out,
        "--no-progress", *extra,
    )  # fmt: skip


def _shard_keys(shards: Path) -> list[str]:
    ds = wds.WebDataset([str(p) for p in sorted(shards.glob("*.tar"))], shardshuffle=False)
    return [s["__key__"] for s in ds]


def _out_keys(out: Path) -> list[str]:
    return _shard_keys(out) if out.exists() else []


# -- nclean's own embeddings ------------------------------------------------------


def test_own_embeddings_join_by_shard_and_key(world, tmp_path, monkeypatch, capsys):
    w = tmp_path / "w.parquet"
    code, err = _score(monkeypatch, capsys, world / "emb", w)
    assert code in (0, None), err
    t = pq.read_table(w)
    assert _meta(w)["join"] == "shard_key"
    assert set(t["shard"].to_pylist()) == {"00000.tar", "00001.tar"}
    code, err = _filter(monkeypatch, capsys, world / "shards", w, tmp_path / "f")
    assert code in (0, None), err
    assert _out_keys(tmp_path / "f") == _shard_keys(world / "shards")


# -- clip-retrieval --enable_metadata over img2dataset shards ---------------------


@pytest.fixture(scope="module")
def cr_sidecar(world, tmp_path_factory):
    """Scored from the clip-retrieval folder (exact img2dataset column set)."""
    root = tmp_path_factory.mktemp("cr")
    cr = clip_retrieval_folder(world / "emb", root / "cr")
    mp = pytest.MonkeyPatch()
    import sys

    from cleaner.cli import main

    w = root / "w.parquet"
    try:
        mp.setattr(sys, "argv", ["nclean", "score", "--embeddings", str(cr), "--out", str(w),
                                 "--beta-source", "shuffled", "--no-progress"])  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main()
        assert exc.value.code in (0, None)
    finally:
        mp.undo()
    return w


def test_clip_retrieval_metadata_does_not_steer_nclean(world, tmp_path, cr_sidecar):
    """img2dataset's status 'success' is not nclean's: every row is scored."""
    t = pq.read_table(cr_sidecar)
    assert len(t) == 40 and set(t["status"].to_pylist()) == {"ok"}
    assert t["key"].to_pylist() == _shard_keys(world / "shards")  # from image_path
    assert set(t["shard"].to_pylist()) == {"0"}  # the partition: the shard is unknown
    assert _meta(cr_sidecar)["join"] == "key"
    beta = _meta(cr_sidecar)["beta"]
    assert math.isfinite(beta["value"]) and beta["k"] == 40
    cache = EmbeddingCache(clip_retrieval_folder(world / "emb", tmp_path / "cr2"))
    assert cache.info("0") is None and cache.ok_mask("0").all()
    assert cache.load("0").meta["status"].to_pylist() == ["ok"] * 40


def test_filter_reaches_shards_by_key(world, tmp_path, cr_sidecar, monkeypatch, capsys):
    code, err = _filter(monkeypatch, capsys, world / "shards", cr_sidecar, tmp_path / "f")
    assert code in (0, None), err
    assert "kept 40" in err
    assert _out_keys(tmp_path / "f") == _shard_keys(world / "shards")
    stats = json.loads((tmp_path / "f" / "stats.json").read_text())
    assert stats["sidecar_rows_without_sample"] == 0
    # a subset of the shards: the rest of the sidecar's rows are counted, not negative
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(world / "shards" / "00001.tar", one / "00001.tar")
    code, err = _filter(monkeypatch, capsys, one, cr_sidecar, tmp_path / "f1", "--where",
                        "osa_weight >= 0")  # fmt: skip
    assert code in (0, None), err
    assert _out_keys(tmp_path / "f1") == _shard_keys(one)
    assert (
        json.loads((tmp_path / "f1" / "stats.json").read_text())["sidecar_rows_without_sample"]
        == 20
    )


def test_streaming_stages_accept_key_joined_sidecar(world, cr_sidecar):
    v = Verdicts.load(cr_sidecar)
    assert v.join == "key"
    urls = [str(p) for p in sorted((world / "shards").glob("*.tar"))]
    kept = list(wds.WebDataset(urls, shardshuffle=False).compose(keep_where(v, "status == 'ok'")))
    assert [s["__key__"] for s in kept] == _shard_keys(world / "shards")
    weighted = list(
        wds.WebDataset(urls, shardshuffle=False).compose(
            attach_weights(v, "osa_weight", key="__weight__")
        )
    )
    expected = dict(zip(v.column("key"), v.column("osa_weight")))
    assert [s["__weight__"] for s in weighted] == pytest.approx(
        [expected[s["__key__"]] for s in weighted]
    )
    rows = v.lookup(["/any/00000.tar"] * 2, _shard_keys(world / "shards")[:2])
    assert rows.tolist() == [0, 1]


def test_trainer_join_accepts_key_joined_sidecar(world, cr_sidecar):
    import torch

    from cleaner.train.data import Split
    from cleaner.train.sidecar import join_sidecar

    keys = _shard_keys(world / "shards")
    shards = np.array(["00000.tar"] * 20 + ["00001.tar"] * 20, dtype=object)
    split = Split(
        shards=shards, keys=np.array(keys, dtype=object), images=torch.zeros(40, 1, 1, 3),
        tokens=torch.zeros(40, 1, dtype=torch.long), labels=np.full(40, -1),
    )  # fmt: skip
    side, meta = join_sidecar(split, str(cr_sidecar))
    assert side["key"].tolist() == keys and meta["join"] == "key"
    # the same key from two shards cannot be told apart by key: a one-line error naming it
    split.keys = np.array([keys[0], *keys[1:20], keys[0], *keys[21:]], dtype=object)
    with pytest.raises(AmbiguousKeyError, match=repr(keys[0])):
        join_sidecar(split, str(cr_sidecar))


# -- ambiguous keys, uid join --------------------------------------------------------


def _tars(root: Path, keys_per_shard: list[list[str]], uids=None) -> Path:
    """Tiny tars with only a txt and a json member (filter copies bytes; no decoding)."""
    root.mkdir(parents=True, exist_ok=True)
    it = iter(uids) if uids is not None else None
    for i, keys in enumerate(keys_per_shard):
        with wds.TarWriter(str(root / f"{i:05d}.tar")) as w:
            for k in keys:
                meta = {"uid": next(it)} if it is not None else {}
                w.write({"__key__": k, "txt": b"c", "json": json.dumps(meta).encode()})
    return root


def _random_cr(root: Path, keys: list[str], uids=None) -> Path:
    """A clip-retrieval folder with random vectors over ``keys``."""
    rng = np.random.default_rng(0)
    n = len(keys)
    img = rng.normal(size=(n, 8)).astype(np.float32)
    txt = img + 0.5 * rng.normal(size=(n, 8)).astype(np.float32)
    for a in (img, txt):
        a /= np.linalg.norm(a, axis=1, keepdims=True)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    np.save(root / "img_emb" / "img_emb_0.npy", img.astype(np.float16))
    np.save(root / "text_emb" / "text_emb_0.npy", txt.astype(np.float16))
    cols = {"image_path": keys, "key": keys, "status": ["success"] * n}
    if uids is not None:
        cols["uid"] = uids
    pq.write_table(pa.table(cols), root / "metadata" / "metadata_0.parquet")
    return root


def test_ambiguous_keys_are_one_line_errors_naming_them(tmp_path, monkeypatch, capsys):
    """Keys that repeat across shards (no uid): scoring warns naming them,
    joining is a one-line error naming them, never a guess."""
    keys = [f"s{i:03d}" for i in range(12)]
    shards = _tars(tmp_path / "shards", [keys, keys])
    cr = _random_cr(tmp_path / "cr", keys + keys)
    assert sample_join(EmbeddingCache(cr), ["0"])[0] == "key"
    w = tmp_path / "w.parquet"
    code, err = _score(monkeypatch, capsys, cr, w)
    assert code in (0, None), err
    assert "keys repeat" in err and "'s000'" in err
    code, err = _filter(monkeypatch, capsys, shards, w, tmp_path / "f")
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ambiguous" in lines[0] and "'s000'" in lines[0], err
    assert not (tmp_path / "f").exists()
    v = Verdicts.load(w)
    with pytest.raises(AmbiguousKeyError, match="1 key is ambiguous.*'s000'"):
        list(wds.WebDataset(str(shards / "00000.tar"), shardshuffle=False).compose(
            keep_where(v, "status == 'ok'")))  # fmt: skip


def test_uid_join_when_keys_repeat(tmp_path, monkeypatch, capsys):
    """Keys repeat across shards but DataComp uids do not: join by uid."""
    keys = [f"s{i:03d}" for i in range(10)]
    uids = [f"{i:032x}" for i in range(20)]
    shards = _tars(tmp_path / "shards", [keys, keys], uids=uids)
    w = tmp_path / "w.parquet"
    code, err = _score(monkeypatch, capsys, _random_cr(tmp_path / "cr", keys + keys, uids), w)
    assert code in (0, None), err
    assert _meta(w)["join"] == "uid"
    keep = tmp_path / "keep.npy"
    code, err = _cli(monkeypatch, capsys, "filter", shards, "--weights", w, "--keep-list", keep,
                     "--where", "osa_weight >= 0", "--no-progress")  # fmt: skip
    assert code in (0, None), err
    assert "kept 20" in err and len(np.load(keep)) == 20
    # resharding them would merge samples that share a key: refused, naming one
    code, err = _filter(monkeypatch, capsys, shards, w, tmp_path / "f")
    assert code == 2 and "'s000'" in err and "output keys must be unique" in err
    v = Verdicts.load(w)
    rows = v.lookup(["00001.tar", "00000.tar"], ["s000", "s000"], uids=[uids[10], uids[0]])
    assert rows.tolist() == [10, 0]
    # the webdataset stages find each sample by the uid in its .json member,
    # before .decode() (bytes) and after it (a dict)
    urls = [str(shards / "00000.tar"), str(shards / "00001.tar")]
    expr = f"cosine > {float(np.median(v.column('cosine')))!r}"  # splits the samples
    keep = dict(zip(v.column("uid"), v.mask(expr)))
    weight = dict(zip(v.column("uid"), v.column("osa_weight")))
    assert 0 < sum(keep.values()) < 20
    for decoded in (False, True):
        ds = wds.WebDataset(urls, shardshuffle=False)
        ds = ds.decode() if decoded else ds
        kept = list(ds.compose(keep_where(v, expr)))
        assert [_uid(s) for s in kept] == [u for u in uids if keep[u]]
    weighted = list(wds.WebDataset(urls, shardshuffle=False).compose(attach_weights(v, "osa_weight")))
    assert [s["__weight__"] for s in weighted] == pytest.approx([weight[u] for u in uids])
    _trainer_joins_by_uid(w, keys, uids)


def _trainer_joins_by_uid(sidecar: Path, keys: list[str], uids: list[str]) -> None:
    """nclean train's join: the decoded samples' uids find their rows (here
    in another order than the sidecar's), whatever their keys."""
    import torch

    from cleaner.train.data import Split
    from cleaner.train.sidecar import join_sidecar

    order = list(range(10, 20)) + list(range(10))  # the second shard first
    split = Split(
        shards=np.array(["00001.tar"] * 10 + ["00000.tar"] * 10, dtype=object),
        keys=np.array([keys[i % 10] for i in order], dtype=object),
        images=torch.zeros(20, 1, 1, 3), tokens=torch.zeros(20, 1, dtype=torch.long),
        labels=np.full(20, -1), uids=np.array([uids[i] for i in order], dtype=object),
    )  # fmt: skip
    side, meta = join_sidecar(split, str(sidecar))
    assert meta["join"] == "uid" and side["uid"].tolist() == [uids[i] for i in order]
    split.uids = None  # a split decoded without uids cannot be joined: said, not guessed
    with pytest.raises(SidecarMismatchError, match="uid"):
        join_sidecar(split, str(sidecar))


def _uid(sample: dict) -> str:
    doc = sample["json"]
    return (json.loads(doc) if isinstance(doc, bytes) else doc)["uid"]


def test_mixed_join_sidecars_are_refused(world, tmp_path, cr_sidecar, monkeypatch, capsys):
    own = tmp_path / "own.parquet"
    code, err = _score(monkeypatch, capsys, world / "emb", own)
    assert code in (0, None), err
    with pytest.raises(ValueError, match="find their samples differently"):
        Verdicts.load([own, cr_sidecar])
    code, err = _filter(monkeypatch, capsys, world / "shards", own, tmp_path / "f",
                        "--weights", cr_sidecar)  # fmt: skip
    assert code == 2 and "differently" in err


# -- filters that keep nothing ---------------------------------------------------------


def test_filter_that_matches_nothing_is_an_error(world, tmp_path, monkeypatch, capsys):
    """A sidecar of other data with --on-missing drop, or a --where that
    drops every sample: exit 2 and no output, never an empty dataset."""
    other = _tars(tmp_path / "other", [[f"x{i}" for i in range(5)]])
    w = tmp_path / "w.parquet"
    code, err = _score(monkeypatch, capsys, world / "emb", w)
    assert code in (0, None), err
    code, err = _filter(monkeypatch, capsys, other, w, tmp_path / "f", "--on-missing", "drop")
    assert code == 2 and "none of the 5 samples has a row" in err, err
    assert not (tmp_path / "f").exists()
    code, err = _filter(monkeypatch, capsys, world / "shards", w, tmp_path / "g", "--where",
                        "osa_weight > 2")  # fmt: skip
    assert code == 2 and "nothing to keep: all 40 samples are dropped (where 40)" in err, err
    assert not (tmp_path / "g").exists()


# -- NaN rows, unreadable metadata -----------------------------------------------------


def test_nan_rows_in_own_cache_stay_out_of_beta(world, tmp_path, monkeypatch, capsys):
    emb = tmp_path / "emb"
    shutil.copytree(world / "emb", emb)
    path = emb / "img_emb" / "img_emb_00000.npy"
    img = np.load(path)
    img[[2, 5]] = np.nan
    np.save(path, img)
    (emb / "text_emb" / "text_emb_00001.npy").write_bytes(
        _with_zero_row((emb / "text_emb" / "text_emb_00001.npy").read_bytes(), 3)
    )
    cache = EmbeddingCache(emb)
    for stem in cache.stems():  # what the fits read agrees with what the transform reads
        assert cache.ok_mask(stem).tolist() == cache.load(stem).ok.tolist()
    assert int(cache.ok_mask("00000").sum()) == 18 and int(cache.ok_mask("00001").sum()) == 19
    w = tmp_path / "w.parquet"
    code, err = _score(monkeypatch, capsys, emb, w)
    assert code in (0, None), err
    beta = _meta(w)["beta"]
    assert math.isfinite(beta["value"]) and math.isfinite(beta["std"]) and beta["k"] == 37
    status = pq.read_table(w)["status"].to_pylist()
    assert status.count("bad_embedding") == 3 and status[2] == status[5] == "bad_embedding"


def _with_zero_row(npy: bytes, row: int) -> bytes:
    arr = np.load(io.BytesIO(npy))
    arr[row] = 0
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_nan_rows_in_clip_retrieval_folder_stay_out_of_beta(tmp_path, monkeypatch, capsys):
    keys = [f"k{i}" for i in range(30)]
    cr = _random_cr(tmp_path / "cr", keys)
    img = np.load(cr / "img_emb" / "img_emb_0.npy")
    img[[0, 7]] = np.nan
    np.save(cr / "img_emb" / "img_emb_0.npy", img)
    w = tmp_path / "w.parquet"
    code, err = _score(monkeypatch, capsys, cr, w)
    assert code in (0, None), err
    beta = _meta(w)["beta"]
    assert math.isfinite(beta["value"]) and beta["k"] == 28


def test_metadata_not_parquet_is_exit_3_naming_it(world, tmp_path, monkeypatch, capsys):
    emb = tmp_path / "emb"
    shutil.copytree(world / "emb", emb)
    bad = emb / "metadata" / "metadata_00001.parquet"
    bad.write_bytes(b"this is not parquet, just some bytes that are long enough")
    code, err = _score(monkeypatch, capsys, emb, tmp_path / "w.parquet")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 3 and len(lines) == 1, err
    assert "metadata_00001.parquet" in lines[0] and "internal error" not in err
    cr = _random_cr(tmp_path / "cr", ["a", "b", "c"])
    (cr / "metadata" / "metadata_0.parquet").write_bytes(b"garbage" * 4)
    code, err = _score(monkeypatch, capsys, cr, tmp_path / "w2.parquet")
    assert code == 3 and "metadata_0.parquet" in err and "internal error" not in err
    with pytest.raises(InputError, match="metadata_0.parquet"):
        EmbeddingCache(cr).ok_mask("0")


def test_old_sidecar_without_join_joins_by_shard_and_key(world, tmp_path, monkeypatch, capsys):
    """A sidecar from before ``join`` existed keeps its (shard, key) join."""
    w = tmp_path / "w.parquet"
    code, err = _score(monkeypatch, capsys, world / "emb", w)
    assert code in (0, None), err
    t = pq.read_table(w)
    meta = _meta(w)
    del meta["join"]
    old = tmp_path / "old.parquet"
    pq.write_table(t.replace_schema_metadata({b"nclean": json.dumps(meta).encode()}), old)
    v = Verdicts.load(old)
    assert v.join == "shard_key"
    with pytest.raises(SidecarMismatchError, match="shard not in the sidecar"):
        v.lookup(["elsewhere.tar"], [t["key"][0].as_py()])

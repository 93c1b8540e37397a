"""The weights API: expressions, lookups, webdataset stages, samplers.

Sidecars are built by hand from the generated shards (``sidecar_for``), with
the real schema and validation but no model, so these tests take seconds.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds

from cleaner.io import schema as S
from cleaner.io.shards import read_shard
from cleaner.io.sidecar import atomic_write_table, build_part, merge_parts
from cleaner.train.weights import (
    SidecarMismatchError,
    Verdicts,
    WeightedSampler,
    attach_weights,
    evaluate,
    keep_indices,
    keep_where,
    shard_name,
)

METHODS = ["osa", "sdd", "sps"]


def uid_of(key: str) -> str:
    """A DataComp-style uid (32 hex digits) for a key."""
    return hashlib.md5(key.encode()).hexdigest()


def sidecar_for(shard_dir: Path, out: Path, seed: int = 0, only: list[str] | None = None) -> Path:
    """Write a valid sidecar (one file) for the shards in ``shard_dir``.

    Statuses come from the generator's planted kinds; method columns are
    seeded random values with the schema's types and fill rules.
    """
    rng = np.random.default_rng(seed)
    metadata = {"schema_version": S.SCHEMA_VERSION, "methods": METHODS}
    parts_dir = out.with_name(out.stem + ".parts")
    parts_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for tar in sorted(shard_dir.glob("*.tar")):
        if only is not None and tar.name not in only:
            continue
        keys, indices, statuses = [], [], []
        for raw in read_shard(tar, wanted=["json"]):
            doc = json.loads(raw.members["json"]) if raw.members.get("json") else {}
            status = doc.get("expected_status", "ok")
            keys.append(raw.key)
            indices.append(raw.index)
            statuses.append("ok" if status == "bad_label" else status)
        n = len(keys)
        ok = np.array([s == "ok" for s in statuses])
        meta = pa.table(
            {
                "key": keys,
                "shard": [tar.name] * n,
                "index": indices,
                "uid": [uid_of(k) for k in keys],
                "status": statuses,
                "error": [None if s == "ok" else s for s in statuses],
            }
        )
        m = int(ok.sum())
        cos = rng.uniform(0.0, 0.5, m).astype(np.float32)
        w = np.clip(cos - 0.15, 0, None).astype(np.float32)
        columns = {
            "cosine": cos,
            "osa_weight": w,
            "osa_weight_norm": (w / max(w.mean(), 1e-6)).astype(np.float32),
            "sdd_keep": cos > 0.2,
            "sdd_w_con": rng.uniform(0, 1, m).astype(np.float32),
            "sdd_clean": cos > 0.3,
            "sdd_mb_image_key": np.array(keys, dtype=object)[ok],
            "sdd_mb_text_key": np.array(keys, dtype=object)[ok],
            "sps_loss": rng.uniform(0, 5, m).astype(np.float32),
            "sps_clean_prob": rng.uniform(0, 1, m).astype(np.float32),
            "sps_partition": rng.choice(np.array(["reliable", "quasi", "noisy"], dtype=object), m),
            "sps_proxy_key": np.array(keys, dtype=object)[ok],
            "sps_proxy_label": rng.uniform(0, 1, m).astype(np.float32),
            "sps_soft_label": rng.uniform(0, 1, m).astype(np.float32),
        }
        part = parts_dir / f"{tar.stem}.parquet"
        atomic_write_table(build_part(meta, ok, columns, METHODS, metadata), part)
        parts.append(part)
    merge_parts(parts, out, metadata)
    return out


@pytest.fixture(scope="module")
def sidecar(shard_dir, tmp_path_factory) -> Path:
    return sidecar_for(shard_dir, tmp_path_factory.mktemp("side") / "weights.parquet")


@pytest.fixture(scope="module")
def verdicts(sidecar) -> Verdicts:
    return Verdicts.load(sidecar)


def _table() -> Verdicts:
    """A small hand-made table with nulls, for the expression rules."""
    table = pa.table(
        {
            "key": ["a", "b", "c", "d"],
            "shard": ["0.tar", "0.tar", "1.tar", "1.tar"],
            "index": [0, 1, 0, 1],
            "uid": ["u0", "u1", None, "u3"],
            "status": ["ok", "ok", "decode_error", "ok"],
            "w": pa.array([0.5, None, 0.0, 2.0], pa.float32()),
            "keep": pa.array([True, None, False, False]),
            "part": ["reliable", None, None, "noisy"],
        }
    )
    return Verdicts(table)


# -- expressions -------------------------------------------------------------


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("w > 0.1", [True, False, False, True]),
        ("keep and w > 0", [True, False, False, False]),
        ("keep or w > 1", [True, False, False, True]),
        # a comparison with a null stays unknown under 'not': never kept
        ("not (w > 1)", [True, False, True, False]),
        ("part == 'reliable'", [True, False, False, False]),
        ("part != 'reliable'", [False, False, False, True]),
        ("0 < w <= 2", [True, False, False, True]),
        ("index == 1 and (shard == '1.tar')", [False, False, False, True]),
        ("keep == True", [True, False, False, False]),
    ],
)
def test_boolean_expressions_and_nulls(expr, expected):
    assert _table().evaluate(expr).tolist() == expected


@pytest.mark.parametrize(
    "expr, expected",
    [
        ("w * 2", [1.0, 0.0, 0.0, 4.0]),  # null * 2 -> null -> weight 0
        ("keep * w", [0.5, 0.0, 0.0, 0.0]),  # booleans are 1/0
        ("-w + 1", [0.5, 0.0, 1.0, -1.0]),
        ("w ** 2 / 2", [0.125, 0.0, 0.0, 2.0]),
        ("w / 0", [np.inf, 0.0, 0.0, np.inf]),  # 0/0 is NaN, which counts as null
        ("3", [3.0] * 4),
    ],
)
def test_numeric_expressions(expr, expected):
    np.testing.assert_allclose(_table().evaluate(expr), expected)


def test_raw_evaluation_keeps_nulls():
    assert _table().evaluate("w > 0.1", fill_null=False).to_pylist() == [True, None, False, True]


@pytest.mark.parametrize(
    "expr, words",
    [
        ("__import__('os').system('true')", "function calls"),
        ("w.real", "attribute"),
        ("w[0]", "indexing"),
        ("nope > 1", "unknown column 'nope'"),
        ("w and keep", "'and' needs true/false"),
        ("not w", "'not' needs true/false"),
        ("part + 1", "needs numbers"),
        ("part > 1", "cannot compare"),
        ("part", "gives text"),
        ("w == None", "None not allowed"),
        ("w if keep else 0", "not allowed"),
        ("part in ('a', 'b')", "'in'"),
        ("w // 2", "'//'"),
        ("keep & keep", "'&'"),
        ("[w]", "List"),
        ("w >", "not valid"),
        ("", "empty"),
        ("lambda: 1", "lambda"),
    ],
)
def test_refusals_are_clear_value_errors(expr, words):
    with pytest.raises(ValueError, match=None) as info:
        _table().evaluate(expr)
    assert words in str(info.value)


def test_module_evaluate_on_arrow_and_pandas():
    # trainers hold sidecar rows already joined to their data, e.g. as a pandas frame
    table = _table().table
    frame = table.to_pandas()  # nulls become NaN / None
    for data in (table, frame, _table()):
        assert evaluate(data, "keep and w > 0").tolist() == [True, False, False, False]
        assert evaluate(data, "w * 2").tolist() == [1.0, 0.0, 0.0, 4.0]
    assert evaluate(frame[["w"]], "w > 1").tolist() == [False, False, False, True]
    with pytest.raises(TypeError):
        evaluate([1, 2], "w > 1")


def test_mask_drops_failed_rows_unless_asked():
    v = _table()
    # row 2 failed (decode_error): "not keep" is true there, but it is dropped by default
    assert v.mask("not keep").tolist() == [False, False, False, True]
    assert v.mask("not keep", keep_failed=True).tolist() == [False, False, True, True]
    assert v.mask(None).tolist() == [True, True, False, True]
    assert v.weights("1").tolist() == [1.0, 1.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="must be true/false"):
        v.mask("w")


# -- loading and lookups ----------------------------------------------------


def test_load_file_and_parts_agree(sidecar, verdicts):
    parts = Verdicts.load(sidecar.with_name("weights.parts"))
    assert len(parts) == len(verdicts) == 3 * 40 + 7
    assert parts.shards == verdicts.shards == ["00000.tar", "00001.tar", "00002.tar"]
    assert verdicts.metadata[0]["methods"] == METHODS
    assert verdicts.column("osa_weight").dtype == np.float32
    with pytest.raises(ValueError, match="rows in both"):
        Verdicts.load([sidecar, sidecar.with_name("weights.parts")])


def test_load_several_sidecars_and_column_subset(shard_dir, tmp_path):
    a = sidecar_for(shard_dir, tmp_path / "a.parquet", only=["00000.tar"])
    b = sidecar_for(shard_dir, tmp_path / "b" / "b.parquet", only=["00001.tar", "00002.tar"])
    v = Verdicts.load([a, b], columns=["osa_weight"])
    assert len(v) == 127 and v.shards == ["00000.tar", "00001.tar", "00002.tar"]
    assert "sdd_keep" not in v.columns and "osa_weight" in v.columns
    with pytest.raises(ValueError, match="no column"):
        Verdicts.load(a, columns=["nope"])


def test_lookup_by_pair_uid_and_key(verdicts):
    shards = verdicts.column("shard")
    keys = verdicts.column("key")
    order = np.random.default_rng(0).permutation(len(verdicts))
    rows = verdicts.lookup(shards[order], keys[order])
    assert rows.tolist() == order.tolist()
    # paths and URLs are reduced to the shard's file name
    assert verdicts.lookup(["/data/x/" + shards[5]], [keys[5]]).tolist() == [5]
    assert verdicts.lookup_uids([uid_of(keys[7]), uid_of(keys[3])]).tolist() == [7, 3]
    assert verdicts.lookup_keys([keys[9]]).tolist() == [9]


def test_lookup_mismatch_error_has_counts(verdicts):
    keys = list(verdicts.column("key"))
    shards = list(verdicts.column("shard"))
    # 3 keys unknown in a known shard, 2 samples of a shard the sidecar does not cover
    q_shards = shards + ["00001.tar"] * 3 + ["00003.tar"] * 2
    q_keys = keys + ["x1", "x2", "x3", keys[0], keys[1]]
    with pytest.raises(SidecarMismatchError) as info:
        verdicts.lookup(q_shards, q_keys)
    msg = str(info.value)
    assert msg.startswith(f"5 of {len(keys) + 5} samples have no row in the sidecar")
    assert "00001.tar (3)" in msg and "00003.tar (2, shard not in the sidecar)" in msg
    rows = verdicts.lookup(q_shards, q_keys, on_missing="drop")
    assert (rows[-5:] == -1).all() and (rows[:-5] >= 0).all()
    with pytest.raises(SidecarMismatchError, match="2 of 3 uids"):
        verdicts.lookup_uids([uid_of(keys[0]), "f" * 32, "0" * 32])
    with pytest.raises(ValueError, match="on_missing"):
        verdicts.lookup(shards, keys, on_missing="ignore")


def test_repeated_key_resolves_to_the_flagged_row():
    table = pa.table(
        {
            "key": ["k", "j", "k"],
            "shard": ["0.tar"] * 3,
            "index": [0, 1, 2],
            "uid": [None, None, None],
            "status": ["ok", "ok", "duplicate_key"],
            "w": pa.array([1.0, 1.0, 0.0]),
        }
    )
    v = Verdicts(table)
    assert v.lookup(["0.tar", "0.tar"], ["k", "j"]).tolist() == [2, 1]
    assert v.shard_index("0.tar") == {"k": 2, "j": 1}


def test_shard_name_from_urls():
    assert shard_name("/a/b/00042.tar") == "00042.tar"
    assert shard_name("https://host/x/00042.tar?sig=abc") == "00042.tar"
    assert shard_name("pipe:aws s3 cp s3://bucket/x/00042.tar -") == "00042.tar"
    assert shard_name("file:/d/00001.tar.gz") == "00001.tar.gz"


# -- webdataset stages ------------------------------------------------------


def _urls(shard_dir, names=None):
    return [str(p) for p in sorted(shard_dir.glob("*.tar")) if names is None or p.name in names]


def test_attach_weights_on_real_shards(shard_dir, verdicts):
    expected = verdicts.weights("osa_weight_norm * sdd_w_con")
    ds = wds.WebDataset(_urls(shard_dir), shardshuffle=False).compose(
        attach_weights(verdicts, "osa_weight_norm * sdd_w_con")
    )
    seen = 0
    for sample in ds:
        row = verdicts.lookup([shard_name(sample["__url__"])], [sample["__key__"]])[0]
        assert sample["__weight__"] == pytest.approx(expected[row])
        seen += 1
    assert seen == len(verdicts)


def test_keep_where_filters_on_real_shards(shard_dir, verdicts):
    expr = "sdd_keep and osa_weight > 0"
    mask = verdicts.mask(expr)
    want = {
        (s, k)
        for s, k, m in zip(verdicts.column("shard"), verdicts.column("key"), mask, strict=True)
        if m
    }
    ds = wds.WebDataset(_urls(shard_dir), shardshuffle=False).compose(keep_where(verdicts, expr))
    got = {(shard_name(s["__url__"]), s["__key__"]) for s in ds}
    assert got == want and 0 < len(got) < len(verdicts)
    # a stage is reusable (state lives in the iteration) and composes with others
    ds2 = wds.WebDataset(_urls(shard_dir), shardshuffle=False).compose(
        keep_where(verdicts, expr), attach_weights(verdicts, "osa_weight")
    )
    assert all(s["__weight__"] > 0 for s in ds2)


def test_stage_mismatch_is_an_error_unless_opted_out(shard_dir, tmp_path):
    # a sidecar of shards 0 and 1 only, joined to all three shards
    partial = Verdicts.load(
        sidecar_for(shard_dir, tmp_path / "p.parquet", only=["00000.tar", "00001.tar"])
    )
    urls = _urls(shard_dir)
    with pytest.raises(SidecarMismatchError, match="shard 00002.tar has no rows in the sidecar"):
        list(
            wds.WebDataset(urls, shardshuffle=False).compose(attach_weights(partial, "osa_weight"))
        )
    zero = list(
        wds.WebDataset(urls, shardshuffle=False).compose(
            attach_weights(partial, "osa_weight", on_missing="zero")
        )
    )
    assert len(zero) == 127 and all(
        s["__weight__"] == 0.0 for s in zero if s["__url__"].endswith("00002.tar")
    )
    dropped = list(
        wds.WebDataset(urls, shardshuffle=False).compose(
            attach_weights(partial, "osa_weight", on_missing="drop")
        )
    )
    assert len(dropped) == 80


def test_stage_reports_missing_keys_with_counts(verdicts):
    samples = [{"__url__": "/d/00000.tar", "__key__": k} for k in verdicts.column("key")[:3]]
    samples.append({"__url__": "/d/00000.tar", "__key__": "stranger"})
    with pytest.raises(
        SidecarMismatchError, match=r"'stranger' of shard 00000.tar .*3 of 4 samples"
    ):
        list(keep_where(verdicts, "osa_weight >= 0")(iter(samples)))
    with pytest.raises(ValueError, match="__url__"):
        list(keep_where(verdicts, "osa_weight >= 0")(iter([{"__key__": "a"}])))


def test_stages_pickle_for_dataloader_workers(verdicts):
    import pickle

    stage = pickle.loads(pickle.dumps(attach_weights(verdicts, "osa_weight")))
    sample = {"__url__": "x/00000.tar", "__key__": verdicts.column("key")[0]}
    assert list(stage(iter([sample])))[0]["__weight__"] == pytest.approx(
        float(verdicts.column("osa_weight")[0])
    )


# -- map-style --------------------------------------------------------------


def test_weighted_sampler_proportions():
    n = 4
    table = pa.table(
        {
            "key": [f"k{i}" for i in range(n)],
            "shard": ["0.tar"] * n,
            "index": list(range(n)),
            "uid": [None] * n,
            "status": ["ok"] * n,
            "w": pa.array([1.0, 2.0, 0.0, 5.0]),
        }
    )
    v = Verdicts(table)
    # dataset order differs from sidecar order: index i holds key k{3-i}
    keys = [f"k{3 - i}" for i in range(n)]
    sampler = WeightedSampler(v, "w", keys=keys, num_samples=80_000, seed=1)
    counts = np.bincount(list(sampler), minlength=n) / 80_000
    np.testing.assert_allclose(counts, [5 / 8, 0, 2 / 8, 1 / 8], atol=0.01)
    assert len(sampler) == 80_000
    # seeded: the same seed and epoch give the same draws, the next epoch others
    a = list(WeightedSampler(v, "w", keys=keys, num_samples=50, seed=3))
    s = WeightedSampler(v, "w", keys=keys, num_samples=50, seed=3)
    assert list(s) == a and list(s) != a
    s.set_epoch(0)
    assert list(s) == a
    pairs = [("0.tar", k) for k in keys]
    assert list(WeightedSampler(v, "w", keys=pairs, num_samples=50, seed=3)) == a
    without = list(WeightedSampler(v, "w", keys=keys, num_samples=3, replacement=False))
    assert sorted(without) == [0, 2, 3]
    with pytest.raises(ValueError, match="every sample weighs 0"):
        WeightedSampler(v, "w * 0", keys=keys)
    with pytest.raises(ValueError, match="negative"):
        WeightedSampler(v, "w - 1", keys=keys)


def test_weighted_sampler_with_torch_dataloader(verdicts):
    import torch.utils.data as tud

    keys = list(verdicts.column("key"))
    sampler = WeightedSampler(verdicts, "osa_weight", keys=keys, num_samples=200)
    loader = tud.DataLoader(list(range(len(keys))), sampler=sampler, batch_size=50)
    drawn = np.concatenate([b.numpy() for b in loader])
    w = verdicts.weights("osa_weight")
    assert len(drawn) == 200 and (w[drawn] > 0).all()


def test_keep_indices(verdicts):
    keys = list(verdicts.column("key"))[::-1]
    idx = keep_indices(verdicts, "sps_partition == 'reliable'", keys=keys)
    part = verdicts.column("sps_partition")[::-1]
    assert idx.tolist() == [i for i, p in enumerate(part) if p == "reliable"]
    uids = [uid_of(k) for k in keys] + ["0" * 32]
    assert (
        keep_indices(verdicts, "sps_partition == 'reliable'", uids=uids, on_missing="drop").tolist()
        == idx.tolist()
    )
    with pytest.raises(SidecarMismatchError):
        keep_indices(verdicts, None, uids=uids)
    with pytest.raises(ValueError, match="exactly one"):
        keep_indices(verdicts, None)

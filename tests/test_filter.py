"""``nclean filter`` end to end on generated shards and hand-built sidecars.

The command function is mounted on a tiny typer app here (cli.py registers it
for the real console entry point).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import typer
import webdataset as wds
from test_weights import sidecar_for, uid_of
from typer.testing import CliRunner

from cleaner.commands.filter import filter_cmd
from cleaner.errors import ConfigError
from cleaner.io.shards import read_shard
from cleaner.train.weights import SidecarMismatchError, Verdicts
from pipelines.filter_job import FilterJob, run_filter, uids_to_datacomp, upsample_counts

app = typer.Typer(add_completion=False)
app.command("filter")(filter_cmd)


@app.callback()
def _root():
    """Keeps 'filter' a subcommand, as in nclean."""


def nclean_filter(*args, ok=True):
    result = CliRunner().invoke(app, ["filter", *map(str, args), "--no-progress"])
    if ok and result.exit_code != 0:
        raise AssertionError(f"exit {result.exit_code}: {result.output}\n{result.exception!r}")
    return result


@pytest.fixture(scope="module")
def sidecar(shard_dir, tmp_path_factory) -> Path:
    return sidecar_for(shard_dir, tmp_path_factory.mktemp("fside") / "weights.parquet", seed=3)


@pytest.fixture(scope="module")
def verdicts(sidecar) -> Verdicts:
    return Verdicts.load(sidecar)


def _members(shard_dir: Path) -> dict[str, dict[str, bytes]]:
    return {
        raw.key: raw.members for tar in sorted(shard_dir.glob("*.tar")) for raw in read_shard(tar)
    }


def _expected_keep(verdicts: Verdicts, expr: str) -> list[str]:
    return [k for k, m in zip(verdicts.column("key"), verdicts.mask(expr), strict=True) if m]


def test_filter_reshards_kept_samples_byte_for_byte(shard_dir, sidecar, verdicts, tmp_path):
    out = tmp_path / "clean"
    result = nclean_filter(
        shard_dir,
        "--weights",
        sidecar,
        "--where",
        "sdd_keep and osa_weight > 0",
        "--out",
        out,
        "--maxcount",
        25,
    )
    want = _expected_keep(verdicts, "sdd_keep and osa_weight > 0")
    assert 25 < len(want) < len(verdicts)

    tars = sorted(out.glob("*.tar"))
    assert [t.name for t in tars] == [f"{i:06d}.tar" for i in range(len(tars))]
    assert len(tars) == -(-len(want) // 25)
    # read back the webdataset way: same keys, same order, bytes unchanged
    samples = list(wds.WebDataset([str(t) for t in tars], shardshuffle=False))
    assert [s["__key__"] for s in samples] == want
    original = _members(shard_dir)
    for s in samples:
        members = {k: v for k, v in s.items() if not k.startswith("__")}
        assert members == original[s["__key__"]]
    assert not list(out.glob(".*"))  # no temporary files left behind

    total = json.loads((out / "stats.json").read_text())
    assert total["input_samples"] == len(verdicts) and total["kept"] == total["written"] == len(
        want
    )
    assert total["dropped"] == len(verdicts) - len(want) == sum(total["reasons"].values())
    # planted bad samples are dropped with their status as the reason
    assert total["reasons"]["decode_error"] == 2 and total["reasons"]["missing_text"] == 2
    assert total["reasons"]["where"] == len(verdicts) - len(want) - 6  # 6 planted samples fail
    assert [o["count"] for o in total["output_shards"]] == [25] * (len(tars) - 1) + [
        len(want) - 25 * (len(tars) - 1)
    ]
    per_shard = [json.loads((out / f"{i:06d}_stats.json").read_text()) for i in range(len(tars))]
    assert sum(p["kept"] for p in per_shard) == len(want)
    assert sum(p["dropped"] for p in per_shard) == total["dropped"]
    assert all(p["successes"] == p["written"] for p in per_shard)
    assert (
        per_shard[0]["input_shards"][0] == "00000.tar"
        and per_shard[-1]["input_shards"][-1] == "00002.tar"
    )
    assert "kept" in result.output and "decode_error" in result.output


def test_no_where_keeps_every_scored_sample(shard_dir, sidecar, verdicts, tmp_path):
    out = tmp_path / "all"
    nclean_filter(shard_dir, "-w", sidecar, "-o", out)
    total = json.loads((out / "stats.json").read_text())
    ok = int((verdicts.column("status") == "ok").sum())
    assert total["kept"] == ok and total["dropped"] == len(verdicts) - ok
    nclean_filter(shard_dir, "-w", sidecar, "-o", tmp_path / "failed_too", "--keep-failed")
    assert json.loads((tmp_path / "failed_too" / "stats.json").read_text())["kept"] == len(verdicts)


def test_upsampling_counts_and_unique_keys(shard_dir, sidecar, verdicts, tmp_path):
    out = tmp_path / "up"
    nclean_filter(
        shard_dir,
        "-w",
        sidecar,
        "--where",
        "osa_weight > 0",
        "--upsample",
        "osa_weight",
        "-o",
        out,
        "--seed",
        7,
    )
    kept_keys = _expected_keep(verdicts, "osa_weight > 0")
    w = verdicts.weights("osa_weight")[verdicts.mask("osa_weight > 0")]
    ratios = w / w.mean()
    samples = list(wds.WebDataset(sorted(str(t) for t in out.glob("*.tar")), shardshuffle=False))
    keys = [s["__key__"] for s in samples]
    assert len(set(keys)) == len(keys)
    # the total is preserved; each sample gets floor or ceil of w / mean(w) copies
    assert abs(len(keys) - len(kept_keys)) <= 1
    base = [k.split("_dup")[0] for k in keys]
    copies = np.array([base.count(k) for k in kept_keys])
    assert np.all(copies >= np.floor(ratios)) and np.all(copies <= np.ceil(ratios))
    assert copies.max() >= 2
    # copies are byte-identical to the original
    original = _members(shard_dir)
    dup = next(s for s in samples if s["__key__"].endswith("_dup1"))
    assert dup["jpg"] == original[dup["__key__"][: -len("_dup1")]]["jpg"]
    total = json.loads((out / "stats.json").read_text())
    assert total["written"] == len(keys) and total["duplicates"] == len(keys) - total["kept"]
    assert total["reasons"].get("upsample_zero", 0) == int((copies == 0).sum())


def test_upsample_counts_are_unbiased():
    r = np.array([0.2, 1.5, 0.0, 3.3, 1.0])
    draws = np.array([upsample_counts(r, seed) for seed in range(4000)])
    assert np.all(draws >= np.floor(r)) and np.all(draws <= np.ceil(r))
    assert set(draws.sum(axis=1)) <= {
        6,
        7,
    }  # sum(r) = 6.0 (+1 possible only through float rounding)
    np.testing.assert_allclose(draws.mean(axis=0), r, atol=0.03)
    with pytest.raises(ValueError):
        upsample_counts(np.array([1.0, -1.0]))


def test_keep_list_is_readable_the_datacomp_way(shard_dir, sidecar, verdicts, tmp_path):
    path = tmp_path / "subset.npy"
    nclean_filter(
        shard_dir,
        "-w",
        sidecar,
        "--where",
        "sps_partition == 'reliable'",
        "--keep-list",
        path,
        "--upsample",
        "sps_clean_prob",
    )
    subset = np.load(path, mmap_mode="r")
    assert subset.dtype == np.dtype("u8,u8")
    pairs = [(int(a), int(b)) for a, b in subset]
    assert pairs == sorted(pairs) and len(pairs) > 0  # sorted as 128-bit numbers
    u16 = np.dtype("u8,u8")

    def count(uid: str) -> int:  # as DataComp's resharder.py probes a subset file
        key = np.array([divmod(int(uid, 16), 2**64)], u16)[0]
        return int(np.searchsorted(subset, key, "right") - np.searchsorted(subset, key, "left"))

    keep = verdicts.mask("sps_partition == 'reliable'")
    keys = verdicts.column("key")
    counts = np.array([count(uid_of(k)) for k in keys])
    assert (counts[~keep] == 0).all() and counts.sum() == len(subset)
    w = verdicts.weights("sps_clean_prob")[keep]
    ratios = w / w.mean()
    assert np.all(counts[keep] >= np.floor(ratios)) and np.all(counts[keep] <= np.ceil(ratios))
    assert abs(len(subset) - keep.sum()) <= 1 and counts.max() >= 2
    assert not (tmp_path / "out").exists()  # --keep-list alone writes no shards


def test_uid_conversion_matches_datacomp():
    uid = "0123456789abcdef" + "fedcba9876543210"
    rec = uids_to_datacomp([uid])[0]
    assert (int(rec[0]), int(rec[1])) == (int(uid[:16], 16), int(uid[16:32], 16))
    with pytest.raises(ConfigError, match="32 hex digits"):
        uids_to_datacomp(["1_0000001"])
    with pytest.raises(ConfigError, match="'z"):
        uids_to_datacomp(["z" * 32])


def test_keep_list_needs_uids(shard_dir, tmp_path):
    side = sidecar_for(shard_dir, tmp_path / "w.parquet")
    table = pq.read_table(side)
    table = table.set_column(
        table.schema.get_field_index("uid"), "uid", pa.nulls(len(table), pa.string())
    )
    pq.write_table(table, side)
    result = nclean_filter(shard_dir, "-w", side, "--keep-list", tmp_path / "s.npy", ok=False)
    assert isinstance(result.exception, ConfigError) and "have no uid" in str(result.exception)


def test_mismatched_sidecar_is_an_error_before_writing(shard_dir, tmp_path):
    side = sidecar_for(shard_dir, tmp_path / "two.parquet", only=["00000.tar", "00001.tar"])
    out = tmp_path / "o"
    result = nclean_filter(shard_dir, "-w", side, "-o", out, ok=False)
    assert isinstance(result.exception, SidecarMismatchError)
    assert str(result.exception).startswith(
        "47 of 127 samples have no row in the sidecar (shards: 00002.tar (47"
    )
    assert not out.exists()  # nothing was written
    nclean_filter(shard_dir, "-w", side, "-o", out, "--on-missing", "drop")
    total = json.loads((out / "stats.json").read_text())
    assert total["reasons"]["no_sidecar_row"] == 47


def test_out_folder_rules(shard_dir, sidecar, tmp_path):
    out = tmp_path / "o"
    nclean_filter(shard_dir, "-w", sidecar, "-o", out, "--where", "sdd_keep")
    again = nclean_filter(shard_dir, "-w", sidecar, "-o", out, "--where", "sdd_keep", ok=False)
    assert isinstance(again.exception, ConfigError) and "--overwrite" in str(again.exception)
    nclean_filter(
        shard_dir,
        "-w",
        sidecar,
        "-o",
        out,
        "--where",
        "sdd_clean",
        "--overwrite",
        "--maxcount",
        1000,
    )
    assert [p.name for p in sorted(out.glob("*.tar"))] == ["000000.tar"]
    inputs = nclean_filter(shard_dir, "-w", sidecar, "-o", shard_dir, "--overwrite", ok=False)
    assert isinstance(inputs.exception, ConfigError) and "input shards" in str(inputs.exception)
    bad = nclean_filter(
        shard_dir, "-w", sidecar, "-o", tmp_path / "x", "--where", "osa_weight", ok=False
    )
    assert isinstance(bad.exception, ConfigError) and "true/false" in str(bad.exception)
    none = nclean_filter(shard_dir, "-w", sidecar, ok=False)
    assert isinstance(none.exception, ConfigError)


def test_truncated_member_is_dropped_with_a_reason(shard_dir, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(shard_dir / "00000.tar", src / "00000.tar")
    with tarfile.open(src / "00000.tar") as tf:
        last = [m for m in tf if m.isfile()][-1]
    with open(src / "00000.tar", "r+b") as fh:  # cut the last member's data in half
        fh.truncate(last.offset_data + last.size // 2)
    side = sidecar_for(src, tmp_path / "t.parquet")
    out = tmp_path / "o"
    summary = run_filter(
        FilterJob(shards=[str(src)], weights=[str(side)], out=str(out), progress=False)
    )
    assert summary.reasons.get("truncated_member") == 1
    assert summary.kept == summary.input_samples - 1
    assert len(list(wds.WebDataset([str(out / "000000.tar")], shardshuffle=False))) == summary.kept


def test_help_lists_the_options():
    result = CliRunner().invoke(app, ["filter", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in (
        "--weights",
        "--where",
        "--out",
        "--maxcount",
        "--upsample",
        "--keep-list",
        "--on-missing",
        "--keep-failed",
        "--overwrite",
    ):
        assert option in result.output

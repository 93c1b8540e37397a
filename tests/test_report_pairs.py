"""nclean report --shards: the pairs themselves (thumbnails, captions, scores) per method.

A small shapes world with planted noise and a sidecar written by hand (so
every verdict is known) checks which rows are chosen, that only those
samples are read, that captions are escaped and that missing or changed
shards become notes. A million-row sidecar checks the choice stays fast.
Headless Chromium opens the demo's page and must find every image loaded.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
import shutil
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from conftest import cli_in_process, deadline

from cleaner.errors import ConfigError
from cleaner.io import schema as S
from cleaner.io.decode import SampleSpec, prepare_sample
from cleaner.io.shards import read_shard
from cleaner.report import browser, pair_images, pair_select
from cleaner.report.build import build_report, load_report_data
from cleaner.report.pair_select import KINDS, select_pairs
from cleaner.worlds import shapes

BETA = 0.15
EVIL = 'a <script>alert("x")</script> & <b>bold</b> caption'
METHODS = ["osa", "sdd", "sps"]
NULL_STR = ("sdd_mb_image_key", "sdd_mb_text_key", "sps_proxy_key")


def _metadata(methods=METHODS) -> dict:
    beta = {"value": BETA, "se": 0.001, "source": "shuffled", "k": 100}
    return {
        "schema_version": S.SCHEMA_VERSION,
        "nclean_version": "test",
        "methods": list(methods),
        "beta": beta,
        "params": {"osa": {"beta": beta}, "sdd": {"alpha": 20.0}, "sps": {}},
        "sample_spec": {"image_keys": ["jpg", "png"], "text_key": "txt"},
    }


def _method_columns(clean: np.ndarray, ok: np.ndarray, rng) -> dict:
    """Verdicts that follow the planted truth, with overlap so the methods disagree."""
    n = len(clean)
    cos = np.where(clean, rng.normal(0.30, 0.07, n), rng.normal(0.10, 0.07, n))
    loss = np.where(clean, rng.normal(5.0, 1.5, n), rng.normal(10.0, 1.5, n))
    prob = 1 / (1 + np.exp(loss - 8))
    part = np.where(prob > 0.99, "reliable", np.where(prob > 0.5, "quasi", "noisy"))
    cols = {
        "cosine": cos,
        "osa_weight": np.clip(cos - BETA, 0, None).astype(np.float32),
        "osa_weight_norm": np.clip(cos - BETA, 0, None).astype(np.float32),
        "sdd_keep": 100 * cos > 20,
        "sdd_w_con": rng.random(n).astype(np.float32),
        "sdd_clean": 100 * cos > 30,
        "sps_loss": loss,
        "sps_clean_prob": prob,
        "sps_partition": part,
        "sps_proxy_label": np.full(n, np.nan),
        "sps_soft_label": np.full(n, np.nan),
    }
    fills = S.fill_for_failed()  # non-nullable columns take these on rows not ok
    out = {}
    for name, values in cols.items():
        arr = pa.array(values)
        other = pa.scalar(fills[name], arr.type) if name in fills else pa.nulls(n, arr.type)
        out[name] = pc.if_else(pa.array(ok), arr, other)
    return out


def write_sidecar_for(shard_dir, path, seed=0) -> pd.DataFrame:
    """Read the shards like nclean score would (statuses), write a sidecar; return it."""
    rows = []
    for tar in sorted(shard_dir.glob("*.tar*")):
        for raw in read_shard(tar):
            status = prepare_sample(raw, SampleSpec()).status
            doc = json.loads(raw.members.get("json") or b"{}")
            rows.append((tar.name, raw.key, raw.index, status, bool(doc.get("clean"))))
    frame = pd.DataFrame(rows, columns=["shard", "key", "index", "status", "clean"])
    ok = (frame.status == "ok").to_numpy()
    n = len(frame)
    cols = {
        "key": pa.array(frame.key),
        "shard": pa.array(frame.shard),
        "index": pa.array(frame["index"], pa.int64()),
        "uid": pa.nulls(n, pa.string()),
        "status": pa.array(frame.status),
        "error": pa.nulls(n, pa.string()),
        **{c: pa.nulls(n, pa.string()) for c in NULL_STR},
        **_method_columns(frame.clean.to_numpy(), ok, np.random.default_rng(seed)),
    }
    schema = S.schema_for(METHODS, _metadata())
    pq.write_table(
        pa.Table.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema), path
    )
    return pq.read_table(path).to_pandas()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    data = shapes.generate(80, seed=3)
    data, _ = shapes.add_caption_noise(data, 0.4, seed=3)
    data[5]["caption"] = EVIL
    shapes.write_shards(data, root / "shards", shard_size=40, plant_corrupt=True)
    table = write_sidecar_for(root / "shards", root / "side.parquet")
    return root, table


@pytest.fixture
def one_figure(monkeypatch):
    """Draw only the status figure: these tests are about the pairs, and each
    matplotlib figure costs about half a second."""
    from cleaner.report import build

    monkeypatch.setattr(build, "FIGURES", {"status": build.FIGURES["status"]})


def _keep(t: pd.DataFrame) -> dict[str, pd.Series]:
    ok = t.status == "ok"
    return {
        "osa": ok & (t.cosine > BETA),
        "sdd": ok & t.sdd_keep,
        "sps": ok & (t.sps_partition != "noisy"),
    }


def test_groups_hold_the_right_rows(world):
    root, t = world
    sel = select_pairs(load_report_data(root / "side.parquet"), k=4, seed=1)
    keep, ok = _keep(t), t.status == "ok"
    score = {"osa": t.cosine, "sdd": t.cosine, "sps": t.sps_clean_prob}
    for m in METHODS:
        others = [keep[o] for o in METHODS if o != m]
        masks = {
            "kept_random": keep[m],
            "dropped_random": ok & ~keep[m],
            "kept_low": keep[m],
            "dropped_high": ok & ~keep[m],
            "kept_disagree": keep[m] & ~(others[0] & others[1]),
            "dropped_disagree": ok & ~keep[m] & (others[0] | others[1]),
        }
        for kind, mask in masks.items():
            rows = [p.row for p in sel.picks[(m, kind)]]
            assert sel.counts[(m, kind)] == int(mask.sum()), (m, kind)
            assert len(rows) == min(4, int(mask.sum())) and mask[rows].all(), (m, kind)
        lowest = score[m][keep[m]].nsmallest(4)
        assert [p.row for p in sel.picks[(m, "kept_low")]] == list(lowest.index)
        highest = score[m][ok & ~keep[m]].nlargest(4)
        assert [p.row for p in sel.picks[(m, "dropped_high")]] == list(highest.index)
        assert sel.kept[m] == int(keep[m].sum())
        for p in sel.picks[(m, "kept_random")]:  # a pick carries what the cards show
            assert (p.shard, p.index, p.key) == tuple(t.loc[p.row, ["shard", "index", "key"]])
            assert p.keep == {o: bool(keep[o][p.row]) for o in METHODS}


def test_choice_is_seeded_and_does_not_depend_on_batches(world, monkeypatch):
    root, _ = world
    d = load_report_data(root / "side.parquet")

    def rows(seed):
        sel = select_pairs(d, k=5, seed=seed)
        return {g: [p.row for p in picks] for g, picks in sel.picks.items()}

    first = rows(0)
    assert rows(0) == first
    assert rows(1) != first  # another seed, another random sample
    monkeypatch.setattr(pair_select, "BATCH_ROWS", 7)  # many small batches, same choice
    assert rows(0) == first


def test_page_shows_pairs_reading_only_those_samples(world, tmp_path, monkeypatch, one_figure):
    root, t = world
    loads = []
    real_load = pair_images._load
    monkeypatch.setattr(
        pair_images,
        "_load",
        lambda fh, infos, *a: loads.append(infos[0].name) or real_load(fh, infos, *a),
    )
    index = build_report(
        root / "side.parquet", tmp_path / "rep", shards=[str(root / "shards")], pairs=3
    )
    page = index.read_text()
    sel = select_pairs(load_report_data(root / "side.parquet"), k=3)
    shown = {(p.shard, p.index) for p in sel.all_picks()}
    assert len(loads) == len(shown) < len(t) / 2  # one read per sample shown, nothing else
    assert 'id="pairs"' in page and 'href="#pairs"' in page
    imgs = re.findall(r'<img src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(imgs) == len(sel.all_picks())
    for title in ("OSA keeps cosine &gt; 0.15:", "SDD keeps sdd_keep:", "SPS keeps sps_partition != &#x27;noisy&#x27;:"):
        assert title in page
    for _, title in KINDS:
        assert title.format(score="cosine") in page or title.format(score="sps_clean_prob") in page
    # each card's caption is the shard's caption for that key
    for p in sel.all_picks()[:6]:
        tar = root / "shards" / p.shard
        member = next(s for s in read_shard(tar, {"txt"}) if s.index == p.index)
        assert member.key == p.key
        caption = member.members["txt"].decode()
        assert f'title="{_escape(caption)}"' in page


def _escape(text: str) -> str:
    return html.escape(text, quote=True)


def test_captions_are_escaped(world, tmp_path, one_figure):
    root, t = world
    evil_key = shapes.generate(80, seed=3)[5]["key"]
    assert t.status[t.key == evil_key].tolist() == ["ok"]
    # 50 per group: every ok row is in a random sample, the evil caption on a card
    sel = select_pairs(load_report_data(root / "side.parquet"), k=50)
    assert evil_key in {p.key for p in sel.all_picks()}
    index = build_report(
        root / "side.parquet", tmp_path / "rep", shards=[str(root / "shards")], pairs=50
    )
    page = index.read_text()
    assert "<script>alert" not in page and "<b>bold</b>" not in page
    assert _escape(EVIL) in page


def test_missing_and_changed_shards(world, tmp_path, one_figure):
    root, t = world
    only = tmp_path / "only"
    only.mkdir()
    shutil.copy(root / "shards" / "00000.tar", only)
    page = build_report(root / "side.parquet", tmp_path / "a", shards=str(only)).read_text()
    assert "shard 00001.tar is not among --shards" in page
    assert "data:image/jpeg" in page  # the other shard's pairs still show

    # another shard under the same name: keys differ, so no wrong image is shown
    changed = tmp_path / "changed"
    data = shapes.generate(80, seed=99)
    shapes.write_shards(data, changed, shard_size=40)
    page = build_report(root / "side.parquet", tmp_path / "b", shards=str(changed)).read_text()
    assert "the shard changed since scoring" in page and "data:image/jpeg" not in page

    other = tmp_path / "other"
    shapes.write_shards(data, other, shard_size=40, prefix="other-")
    with pytest.raises(ConfigError, match="none of the shards"):
        build_report(root / "side.parquet", tmp_path / "c", shards=str(other))


def test_gzipped_shards_show_the_same_pairs(world, tmp_path, one_figure):
    root, _ = world
    gz = tmp_path / "gz"
    gz.mkdir()
    for tar in (root / "shards").glob("*.tar"):
        (gz / f"{tar.name}.gz").write_bytes(gzip.compress(tar.read_bytes(), mtime=0))
    gz_side = tmp_path / "gz_side.parquet"
    write_sidecar_for(gz, gz_side)  # shard names are 0000N.tar.gz here
    plain = build_report(
        root / "side.parquet", tmp_path / "p", shards=str(root / "shards")
    ).read_text()
    packed = build_report(gz_side, tmp_path / "g", shards=str(gz / "*.tar.gz")).read_text()
    caps = lambda page: re.findall(r'<p class="cap" title="([^"]*)"', page)  # noqa: E731
    assert caps(plain) == caps(packed) and len(caps(plain)) > 20


def test_command_options(world, tmp_path, monkeypatch, capsys, one_figure):
    root, _ = world
    side, shards = root / "side.parquet", root / "shards"
    code, err = cli_in_process(
        monkeypatch,
        capsys,
        "report",
        side,
        "--shards",
        shards,
        "--pairs",
        "2",
        "--out",
        tmp_path / "r",
    )
    assert code == 0 and "index.html" in err
    assert 'id="pairs"' in (tmp_path / "r" / "index.html").read_text()
    for args, words in [
        (["--shards", shards, "--pairs", "0"], "--pairs must be between 1 and 50"),
        (["--shards", shards, "--format", "text"], "--shards shows pairs on the html page"),
        (["--shards", tmp_path / "nowhere"], "shard not found"),
    ]:
        code, err = cli_in_process(
            monkeypatch, capsys, "report", side, *args, "--out", tmp_path / "x"
        )
        assert code == 2 and err.strip().count("\n") == 0 and words in err, err


def _million_rows(path, n=1_000_000):
    """A million-row sidecar (1,000 shards x 1,000 rows), written fast with arrow kernels."""
    rng = np.random.default_rng(0)
    idx = pa.array(np.arange(n))
    ok = np.ones(n, bool)
    cols = {
        "key": pc.cast(idx, pa.string()),
        "shard": pa.array([f"{i:05d}.tar" for i in range(n // 1000)]).take(
            pa.array(np.arange(n) // 1000)
        ),
        "index": pa.array(np.arange(n) % 1000),
        "uid": pa.nulls(n, pa.string()),
        "status": pa.array(np.full(n, "ok")),
        "error": pa.nulls(n, pa.string()),
        **{c: pa.nulls(n, pa.string()) for c in NULL_STR},
        **_method_columns(rng.random(n) < 0.6, ok, rng),
    }
    schema = S.schema_for(METHODS, _metadata())
    pq.write_table(
        pa.Table.from_arrays([cols[f.name].cast(f.type) for f in schema], schema=schema), path
    )


def test_million_row_sidecar_is_fast(tmp_path):
    path = tmp_path / "big.parquet"
    _million_rows(path)
    d = load_report_data(path)
    start = time.perf_counter()
    with deadline(60):
        sel = select_pairs(d, k=6, seed=0)
    took = time.perf_counter() - start
    print(f"select_pairs on {d.n_rows:,} rows: {took:.2f} s")
    cos = pq.read_table(path, columns=["cosine"]).column("cosine").to_numpy()
    kept = np.flatnonzero(cos > BETA)
    assert [p.row for p in sel.picks[("osa", "kept_low")]] == list(kept[np.argsort(cos[kept])[:6]])
    assert all(len(v) == 6 for v in sel.picks.values())


def _chromium_or_fail():
    try:
        return browser.find_chromium()
    except browser.BrowserMissing as exc:
        if os.environ.get("NCLEAN_SKIP_BROWSER") == "1":
            pytest.skip(f"NCLEAN_SKIP_BROWSER=1: {exc}")
        pytest.fail(f"{exc} (or set NCLEAN_SKIP_BROWSER=1 to skip the browser checks)")


def test_demo_ends_at_a_page_whose_images_load(tmp_path, capsys):
    """The demo's last line points at its report; Chromium finds every image loaded."""
    from cleaner.worlds.demo import run_demo

    report = run_demo(
        tmp_path / "demo", samples=60, noise=0.4, progress=False, random_estimator=True
    )
    err = capsys.readouterr().err
    page = tmp_path / "demo" / "report" / "index.html"
    assert report["page"] == str(page) and f"report: {page}" in err
    html_text = page.read_text()
    n_thumbs = html_text.count('src="data:image/jpeg')
    assert n_thumbs >= 20 and 'id="pairs"' in html_text
    _chromium_or_fail()
    result = browser.check_page(page)
    assert browser.problems(result, min_images=n_thumbs + 5) == [], result
    assert 2_000 < result["height"] < 60_000, result


def test_browser_check_sees_broken_images(world, tmp_path, one_figure):
    """The check can fail: a missing figure and a bad data URI are reported broken."""
    _chromium_or_fail()
    root, _ = world
    index = build_report(
        root / "side.parquet", tmp_path / "rep", shards=str(root / "shards"), pairs=1
    )
    assert browser.problems(browser.check_page(index)) == []
    (index.parent / "status.png").unlink()
    page = index.read_text()
    index.write_text(page.replace("data:image/jpeg;base64,", "data:image/jpeg;base64,AAAA", 1))
    result = browser.check_page(index)
    assert len(result["broken"]) == 2, result
    assert browser.main([str(index.parent)]) == 1


def test_missing_browser_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CHROMIUM", str(tmp_path / "no-such-chrome"))
    with pytest.raises(browser.BrowserMissing, match="apt-get install -y chromium"):
        browser.find_chromium()
    (tmp_path / "index.html").write_text("<html><body></body></html>")
    assert browser.main([str(tmp_path)]) == 2
    assert "no Chromium found" in capsys.readouterr().err

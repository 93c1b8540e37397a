"""The weights API's stages in real webdataset pipelines, on both webdataset lines.

Every order a user would write -- keep/attach before or after ``.decode("pil")``,
then ``.to_tuple()`` and batching -- runs on generated shards with and without
a continue-handler, and must yield exactly the kept samples with their
weights (a continue-handler must not hide a pipeline that yields nothing).
The docstring examples of :mod:`cleaner.train.weights` and
:mod:`cleaner.train.stages` run as doctests, and the README's snippet runs
without webdataset's ``shardshuffle`` warning.

The venv holds webdataset 1.x; :func:`test_under_webdataset_0_2_86` reruns
this file and the other webdataset-facing tests (weights API, ``nclean
filter``, shard reading) in a subprocess that imports webdataset 0.2.86, the
version ``open_clip_torch[training]`` pins.

The shards carry every planted bad sample but ``bad_label`` (a ``cls``
member that is not a number, which webdataset's own decoder rejects whatever
nclean does), so ``.decode("pil")`` without a handler can succeed on the
samples ``keep_where`` keeps.
"""

from __future__ import annotations

import doctest
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image
from test_weights import sidecar_for

from cleaner.train import stages, weights
from cleaner.train.stages import UndecodedWeightWarning, is_undecoded
from cleaner.train.weights import Verdicts, attach_weights, keep_where, shard_name
from cleaner.worlds import shapes

ROOT = Path(__file__).resolve().parents[1]
KEEP = "sdd_keep"
WEIGHT = "osa_weight_norm * sdd_w_con"
LINE = os.environ.get("NCLEAN_WDS_LINE")  # set when rerun under another webdataset


def test_runs_on_the_expected_webdataset():
    if LINE is not None:
        assert wds.__version__ == LINE, wds.__file__
    else:
        assert int(wds.__version__.split(".")[0]) >= 1, wds.__version__


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wshards")
    data, _ = shapes.add_caption_noise(shapes.generate(90, seed=4), 0.3, seed=4)
    kinds = [k for k in shapes.PLANTED_KINDS if k != "bad_label"]
    shapes.write_shards(data, out, shard_size=30, plant_corrupt=kinds)
    return out


@pytest.fixture(scope="module")
def side(shards, tmp_path_factory) -> Path:
    return sidecar_for(shards, tmp_path_factory.mktemp("wside") / "weights.parquet", seed=5)


@pytest.fixture(scope="module")
def v(side) -> Verdicts:
    return Verdicts.load(side)


@pytest.fixture(scope="module")
def urls(shards) -> list[str]:
    return [str(p) for p in sorted(shards.glob("*.tar"))]


def _source(urls):
    return wds.WebDataset(urls, shardshuffle=False)


def _expected(v: Verdicts, keep: bool) -> dict[tuple[str, str], float]:
    """(shard, key) -> weight of the samples a pipeline must yield."""
    w = v.weights(WEIGHT)
    mask = v.mask(KEEP if keep else None)
    return {
        (s, k): float(w[i])
        for i, (s, k) in enumerate(zip(v.column("shard"), v.column("key"), strict=True))
        if mask[i]
    }


# (name, builder, weight key, keeps) -- each builder is an order a user would write
PIPELINES = [
    (
        "keep-attach-decode",
        lambda u, v, h: (
            _source(u)
            .compose(keep_where(v, KEEP), attach_weights(v, WEIGHT, key="__weight__"))
            .decode("pil", handler=h)
        ),
        "__weight__",
    ),
    (
        "attach-keep-decode",
        lambda u, v, h: (
            _source(u)
            .compose(attach_weights(v, WEIGHT, key="__weight__"), keep_where(v, KEEP))
            .decode("pil", handler=h)
        ),
        "__weight__",
    ),
    (
        "keep-decode-attach",
        lambda u, v, h: (
            _source(u)
            .compose(keep_where(v, KEEP))
            .decode("pil", handler=h)
            .compose(attach_weights(v, WEIGHT, key="weight"))
        ),
        "weight",
    ),
    (
        "keep-attach-decode-default-key",  # the order of the old docstring, default key
        lambda u, v, h: (
            _source(u)
            .compose(keep_where(v, KEEP), attach_weights(v, WEIGHT))
            .decode("pil", handler=h)
        ),
        "__weight__",
    ),
    (
        "keep-decode-attach-dunder",
        lambda u, v, h: (
            _source(u)
            .compose(keep_where(v, KEEP))
            .decode("pil", handler=h)
            .compose(attach_weights(v, WEIGHT, key="__weight__"))
        ),
        "__weight__",
    ),
]


@pytest.mark.parametrize("handler", [wds.reraise_exception, wds.ignore_and_continue])
@pytest.mark.parametrize("name, build, key", PIPELINES, ids=[p[0] for p in PIPELINES])
def test_every_order_yields_the_kept_samples_decoded(urls, v, name, build, key, handler):
    want = _expected(v, keep=True)
    got = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndecodedWeightWarning)
        for sample in build(urls, v, handler):
            assert isinstance(sample["jpg"], Image.Image) and isinstance(sample["txt"], str)
            assert isinstance(sample[key], float)
            got[(shard_name(sample["__url__"]), sample["__key__"])] = sample[key]
    assert 0 < len(want) < len(v)
    assert got.keys() == want.keys()
    assert got == pytest.approx(want)


@pytest.mark.parametrize("handler", [wds.reraise_exception, wds.ignore_and_continue])
def test_dunder_key_survives_to_tuple_and_batching(urls, v, handler):
    ds = (
        _source(urls)
        .compose(keep_where(v, KEEP), attach_weights(v, WEIGHT, key="__weight__"))
        .decode("pil", handler=handler)
        .to_tuple("jpg", "txt", "__weight__", "__key__")
        .batched(16, partial=True)
    )
    want = _expected(v, keep=True)
    seen = {}
    for images, captions, ws, keys in ds:
        assert len(images) == len(captions) == len(ws) == len(keys) <= 16
        assert all(isinstance(im, Image.Image) for im in images)
        seen.update(zip(keys, (float(w) for w in ws), strict=True))
    assert seen == pytest.approx({k: w for (_, k), w in want.items()})


def test_decode_first_then_keep_and_attach(urls, v):
    # decoding before keep_where meets the planted undecodable samples: a handler skips them
    ds = (
        _source(urls)
        .decode("pil", handler=wds.ignore_and_continue)
        .compose(keep_where(v, KEEP), attach_weights(v, WEIGHT, key="weight"))
    )
    got = {(shard_name(s["__url__"]), s["__key__"]): s["weight"] for s in ds}
    assert got == pytest.approx(_expected(v, keep=True))


def test_attach_without_keep_weighs_failed_rows_zero(urls, v):
    ds = (
        _source(urls)
        .compose(attach_weights(v, WEIGHT, key="__weight__"))
        .decode("pil", handler=wds.ignore_and_continue)
    )
    w = _expected(v, keep=False)  # every ok row, with its weight
    got = {(shard_name(s["__url__"]), s["__key__"]): s["__weight__"] for s in ds}
    # the handler drops the samples the decoder rejects; every ok row gets through with its
    # weight, failed rows that still decode (no image, empty caption) with weight 0
    assert w.keys() <= got.keys() and len(got) < len(v)
    assert got == pytest.approx({k: w.get(k, 0.0) for k in got})


def test_plain_key_before_decode_warns_instead_of_silently_yielding_nothing(urls, v):
    ds = (
        _source(urls)
        .compose(keep_where(v, KEEP), attach_weights(v, WEIGHT, key="weight"))
        .decode("pil", handler=wds.ignore_and_continue)
    )
    with pytest.warns(UndecodedWeightWarning, match="key='__weight__'"):
        n = sum(1 for _ in ds)
    # webdataset's decoder rejects the float: this is the failure the warning names
    assert n == 0


def test_no_warning_where_the_key_is_safe(urls, v):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UndecodedWeightWarning)
        list(_source(urls).compose(attach_weights(v, WEIGHT, key="__w__")))
        list(
            _source(urls)
            .decode("pil", handler=wds.ignore_and_continue)
            .compose(attach_weights(v, WEIGHT))
        )


def test_is_undecoded():
    assert is_undecoded({"__key__": "a", "jpg": b"x", "txt": b"y"})
    assert not is_undecoded({"__key__": "a", "jpg": object(), "txt": "y"})
    assert not is_undecoded({"__key__": "a"})


def test_stage_after_to_tuple_is_a_clear_error(urls, v):
    ds = _source(urls).to_tuple("jpg", "txt").compose(keep_where(v, KEEP))
    with pytest.raises(TypeError, match=r"sample dicts, got tuple: put them before .to_tuple\(\)"):
        next(iter(ds))
    with pytest.raises(TypeError, match="non-empty string"):
        attach_weights(v, WEIGHT, key="")


# -- the documented pipelines ------------------------------------------------


@pytest.mark.parametrize("module", [weights, stages], ids=["weights", "stages"])
def test_docstring_examples_run(module, side, urls, v, monkeypatch):
    monkeypatch.chdir(side.parent)  # the examples load "weights.parquet"
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = {**vars(module), "urls": urls, "v": v}
    tried = 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for test in finder.find(module, module.__name__, globs=globs):
            result = runner.run(test, out=lambda text: pytest.fail(text))
            tried += result.attempted
    assert tried >= 5
    assert not [w for w in caught if "shardshuffle" in str(w.message)]
    assert not [w for w in caught if issubclass(w.category, UndecodedWeightWarning)]


def _readme_weights_snippet() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if "from cleaner.train.weights import" in b]
    assert len(found) == 1, "README: one python block uses the weights API"
    return found[0]


def test_readme_snippet_runs_without_shardshuffle_warning(side, urls, v, monkeypatch):
    monkeypatch.chdir(side.parent)
    namespace = {"urls": urls}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(compile(_readme_weights_snippet(), "README.md", "exec"), namespace)
        rows = list(namespace["ds"])
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "shardshuffle" in m], messages
    assert not [w for w in caught if issubclass(w.category, UndecodedWeightWarning)]
    assert len(rows) == int(v.mask("sdd_keep").sum()) > 0
    assert all(isinstance(r[0], Image.Image) and isinstance(r[-1], float) for r in rows)


def test_shardshuffle_warning_is_real_on_webdataset_1():
    # guards the test above: on 1.x, leaving shardshuffle out does warn
    if LINE is not None:
        pytest.skip("webdataset 0.2.x does not warn")
    with pytest.warns(UserWarning, match="shardshuffle"):
        wds.WebDataset([str(ROOT / "none.tar")])


# -- the other webdataset line -----------------------------------------------


def test_under_webdataset_0_2_86(wds_legacy_env):
    """This file and the other webdataset-facing tests, under webdataset 0.2.86."""
    if LINE is not None:
        pytest.skip("already the rerun")
    files = ["test_wds_pipelines.py", "test_weights.py", "test_filter.py", "test_shards.py"]
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x"]  # addopts has -q
    proc = subprocess.run(
        [*cmd, *(str(ROOT / "tests" / f) for f in files)],
        cwd=ROOT,
        env=wds_legacy_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout), proc.stdout[-2000:]

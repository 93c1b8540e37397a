"""Robustness: every odd input ends as a status row or a one-line error.

Never a traceback, never a hang, never a silently dropped sample. Most cases
are proved at the unit level (read_shard / prepare_sample / decode_image /
EmbeddingCache.load, with the tiny model's real transform and tokenizer);
the shard-level ones also go once through the real CLI, all planted in ONE
shard folder (``robust_run``), with a subprocess timeout. Error cases run
the console entry point ``main()`` in-process (a SIGALRM deadline stands in
for the timeout), which checks the exit code and the one-line message.

What users see for keys with dots (webdataset semantics): the key ends at
the first dot of the *file name*, so ``img.v2.jpg`` + ``img.v2.txt`` are one
sample with key ``img`` and members ``v2.jpg`` / ``v2.txt``. With the default
``--image-key`` that row is ``missing_image``; ``--image-key v2.jpg
--text-key v2.txt`` reads it. ``x.1.jpg`` and ``x.2.jpg`` are ONE sample
``x`` (as webdataset groups them), not two.

Fixed on the way: a tar cut at a member boundary or inside a header lost its
tail without a warning (cleaner/shards.py now checks the end-of-archive
marker); a tar cut inside an image gave ``missing_text`` (the caption member
was never reached) instead of ``decode_error`` (cleaner/decode.py); a 1xN
image within max_pixels blew up in the shortest-side resize (now centre-
cropped to MAX_ASPECT_RATIO first, cleaner/decode.py).
"""

from __future__ import annotations

import functools
import io
import json
import struct
import tarfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import TINY, cli_in_process, deadline, run_cli, tiny_args
from PIL import Image, ImageFile

from cleaner.errors import ConfigError, InputError
from cleaner.io import schema as S
from cleaner.io.decode import MAX_ASPECT_RATIO, SampleSpec, decode_image, prepare_sample
from cleaner.io.embcache import EmbeddingCache
from cleaner.io.shards import ShardReport, read_shard

# -- helpers -----------------------------------------------------------------


_deadline = deadline


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb_jpeg(size=(48, 40), colour=(200, 30, 30)) -> bytes:
    return _enc(Image.new("RGB", size, colour), "JPEG")


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = _enc(Image.fromarray(noise), "JPEG")
    return data[: len(data) // 2]


def _png16() -> bytes:
    arr = (np.arange(32 * 24).reshape(24, 32) * 80).astype(np.uint16)
    return _enc(Image.fromarray(arr), "PNG")  # mode I;16


def _exif_jpeg() -> bytes:
    """Stored 40x20, left half red / right half blue, EXIF orientation 6
    (shown rotated 90 degrees clockwise: 20x40, red on top, blue below)."""
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    return _enc(img, "JPEG", exif=exif.tobytes(), quality=95)


@functools.lru_cache(maxsize=1)
def _huge_png() -> bytes:
    # a real 10000x10000 PNG of one colour, made cheaply (1 bit per pixel: 12.5 MB raw)
    return _enc(Image.new("1", (10_000, 10_000), 1), "PNG")


def _png_claiming(width: int, height: int) -> bytes:
    """A ~100-byte PNG whose header claims width x height RGB pixels."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A small baseline JPEG whose SOF0 header is patched to claim width x height."""
    data = bytearray(_rgb_jpeg((16, 16)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _samples(path, **kw):
    report = ShardReport()
    return list(read_shard(path, report=report, **kw)), report


@pytest.fixture(scope="module")
def est(tiny_ckpt):
    from cleaner.estimator.model import load_estimator

    return load_estimator(TINY, str(tiny_ckpt), device="cpu")


def _prepare(est, members: dict, transform=None, **spec):
    from cleaner.io.shards import RawSample

    with _deadline(20):
        return prepare_sample(
            RawSample("k", 0, members),
            SampleSpec(**spec),
            transform or est.pil_transform,
            est.tokenizer,
            draft_size=est.image_size,
        )


_cli = functools.partial(cli_in_process, timeout=60)


def _one_line_error(err: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("nclean: error:") and needle in lines[0], err


# -- images ------------------------------------------------------------------


def test_truncated_jpeg(est):
    out = _prepare(est, {"jpg": _truncated_jpeg(), "txt": CAP})
    assert out.status == "decode_error" and out.image is None and out.error


def test_png_with_alpha_is_composited_on_white(est):
    data = _enc(Image.new("RGBA", (32, 24), (200, 10, 10, 0)), "PNG")  # fully transparent
    out = _prepare(est, {"png": data, "txt": CAP})
    assert out.status == "ok" and out.image.shape == (64, 64, 3)
    assert out.image.min() > 240  # white, not black


def test_sixteen_bit_png(est):
    out = _prepare(est, {"png": _png16(), "txt": CAP})
    assert out.status == "ok" and out.image.dtype == np.uint8
    assert out.image.max() - out.image.min() > 100  # contrast kept, not clipped to white


def test_cmyk_jpeg(est):
    out = _prepare(
        est, {"jpg": _enc(Image.new("CMYK", (32, 24), (0, 200, 200, 0)), "JPEG"), "txt": CAP}
    )
    assert out.status == "ok" and out.image.shape == (64, 64, 3)
    r, g, b = out.image[32, 32].astype(int)
    assert r > 150 and g < 120 and b < 120  # C=0 M=Y=high: red


def test_grayscale(est):
    for ext, data in (
        ("jpg", _enc(Image.new("L", (32, 24), 90), "JPEG")),
        ("png", _enc(Image.new("LA", (32, 24), (90, 255)), "PNG")),
        ("png", _enc(Image.new("1", (32, 24), 1), "PNG")),
    ):
        out = _prepare(est, {ext: data, "txt": CAP})
        assert out.status == "ok" and out.image.shape == (64, 64, 3)
        assert np.ptp(out.image.astype(int), axis=2).max() <= 2  # still grey


def test_exif_rotated_image_is_upright(est):
    out = _prepare(est, {"jpg": _exif_jpeg(), "txt": CAP})
    assert out.status == "ok"
    top, bottom = out.image[4, 10].astype(int), out.image[60, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # red on top ...
    assert bottom[2] > 200 and bottom[0] < 60  # ... blue below: rotation applied


def test_tiny_image(est):
    out = _prepare(est, {"png": _enc(Image.new("RGB", (1, 1), (10, 200, 30)), "PNG"), "txt": CAP})
    assert out.status == "ok" and out.image.shape == (64, 64, 3)
    assert tuple(out.image[32, 32]) == (10, 200, 30)


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Make any attempt to decode pixel data fail the test."""

    def refuse(self):
        raise AssertionError(f"pixels decoded for a {self.size} image")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


def test_very_large_image_refused_from_header(no_pixel_decoding):
    data = _huge_png()
    assert len(data) < 200_000
    with _deadline(10):
        img, status, error = decode_image(data)
    assert img is None and status == "image_too_large" and "pixels" in error


def test_large_image_within_limit_is_handled(est):
    data = _enc(Image.new("RGB", (3000, 2000), (0, 90, 200)), "JPEG")
    out = _prepare(est, {"jpg": data, "txt": CAP})
    assert out.status == "ok" and out.image.shape == (64, 64, 3)
    assert (
        _prepare(est, {"jpg": data, "txt": CAP}, max_pixels=5_000_000).status == "image_too_large"
    )


def test_extreme_aspect_ratio_stays_small(est):
    """1x60000 pixels: a 300-byte PNG within max_pixels whose shortest-side
    resize would make a 64 x 3.8M (224 x 13M for ViT-B) image; it is
    centre-cropped to MAX_ASPECT_RATIO first (cleaner.io.decode._limit_aspect)."""
    seen = []

    def spy(img):
        seen.append(img.size)
        return est.pil_transform(img)

    for size in ((1, 60_000), (60_000, 1), (3, 5_000)):
        out = _prepare(
            est, {"png": _enc(Image.new("RGB", size, (9, 90, 9)), "PNG"), "txt": CAP}, transform=spy
        )
        assert out.status == "ok" and out.image.shape == (64, 64, 3)
        assert tuple(out.image[32, 32]) == (9, 90, 9)
    assert all(max(w, h) <= (MAX_ASPECT_RATIO + 1) * min(w, h) for w, h in seen), seen
    normal = _prepare(
        est, {"png": _enc(Image.new("RGB", (970, 90)), "PNG"), "txt": CAP}, transform=spy
    )
    assert normal.status == "ok" and seen[-1] == (970, 90)  # ordinary banners are untouched


def test_decompression_bomb(no_pixel_decoding):
    cases = {
        "png 100000x100000 (PIL's own bomb error)": _png_claiming(100_000, 100_000),
        "png 9000x9000 (over our limit, under PIL's)": _png_claiming(9_000, 9_000),
        "jpeg 60000x60000": _jpeg_claiming(60_000, 60_000),
    }
    for what, data in cases.items():
        assert len(data) < 2_000, what
        with _deadline(10):
            img, status, error = decode_image(data)
        assert img is None and status == "image_too_large" and error, (what, status, error)


# -- captions ----------------------------------------------------------------


def test_one_megabyte_caption_is_fast(est):
    captions = {
        "words": b"a red square " * 80_000,
        "one 1 MB word": b"x" * 1_000_000,
        "CJK, no spaces": ("\u732b" * 350_000).encode(),
    }
    for what, cap in captions.items():
        assert len(cap) >= 1_000_000
        t0 = time.perf_counter()
        out = _prepare(est, {"jpg": _rgb_jpeg(), "txt": cap})
        seconds = time.perf_counter() - t0
        assert out.status == "ok" and out.tokens.shape == (est.context_length,), what
        # ~0.01-0.03 s measured: the caption is cut to 10k characters before
        # tokenising (a whole 1 MB word tokenises in ~1.3 s)
        assert seconds < 1.0, f"{what}: {seconds:.2f}s"


def test_non_utf8_caption(est):
    for cap in ("caf\xe9 cr\xe8me".encode("latin-1"), "a cat".encode("utf-16"), b"\xff\xfe\x00bad"):
        out = _prepare(est, {"jpg": _rgb_jpeg(), "txt": cap})
        assert out.status == "bad_text" and "not UTF-8" in out.error, cap


# -- shard structure ---------------------------------------------------------


def test_keys_with_dots(tmp_path, est):
    p = _tar(
        tmp_path / "s.tar",
        [
            ("dir/img.v2.jpg", _rgb_jpeg()),
            ("dir/img.v2.txt", CAP),
            ("x.1.jpg", _rgb_jpeg()),
            ("x.1.txt", CAP),
            ("x.2.jpg", _rgb_jpeg()),
            ("x.2.txt", CAP),
        ],
    )
    samples, _ = _samples(p)
    # the key ends at the first dot of the file name: two samples, not three
    assert [s.key for s in samples] == ["dir/img", "x"]
    assert sorted(samples[0].members) == ["v2.jpg", "v2.txt"]
    assert sorted(samples[1].members) == ["1.jpg", "1.txt", "2.jpg", "2.txt"]
    # default keys: a missing_image row (what the user sees) ...
    out = prepare_sample(samples[0], SampleSpec())
    assert out.status == "missing_image" and "no image member" in out.error
    # ... and naming the full extensions reads it
    assert (
        _prepare(est, samples[0].members, image_keys=("v2.jpg",), text_key="v2.txt").status == "ok"
    )


def test_duplicate_keys(tmp_path):
    p = _tar(
        tmp_path / "s.tar",
        [("a.jpg", b"1"), ("a.txt", b"1"), ("a.jpg", b"2"), ("a.txt", b"2"), ("a.jpg", b"3")],
    )
    samples, _ = _samples(p)
    assert [(s.key, s.problem) for s in samples] == [
        ("a", None),
        ("a", "duplicate_key"),
        ("a", "duplicate_key"),
    ]
    assert prepare_sample(samples[1], SampleSpec()).status == "duplicate_key"


def test_non_contiguous_members(tmp_path):
    p = _tar(
        tmp_path / "s.tar",
        [("a.jpg", b"A"), ("b.jpg", b"B"), ("c.txt", b"C"), ("b.txt", b"tb"), ("a.txt", b"ta")],
    )
    samples, report = _samples(p)
    assert [(s.key, s.members) for s in samples] == [
        ("a", {"jpg": b"A", "txt": b"ta"}),
        ("b", {"jpg": b"B", "txt": b"tb"}),
        ("c", {"txt": b"C"}),
    ]
    assert all(s.problem is None for s in samples) and not report.warnings


def test_empty_tar(tmp_path, monkeypatch, capsys, tiny_ckpt):
    members_none = _tar(tmp_path / "none.tar", [])
    zero_bytes = tmp_path / "zero.tar"
    zero_bytes.write_bytes(b"")
    assert _samples(members_none) == ([], ShardReport())
    samples, report = _samples(zero_bytes)
    assert samples == [] and report.warnings == ["empty file (0 bytes)"]
    # next to other shards: no rows, no failure (empty.tar in the CLI run below)
    # alone: nothing to score is exit 4 with one line
    d = tmp_path / "only"
    d.mkdir()
    _tar(d / "e.tar", [])
    args = ["score", d, "--out", tmp_path / "o", *tiny_args(tiny_ckpt)]
    code, err = _cli(monkeypatch, capsys, *args)
    assert code == 4
    _one_line_error(err, "nothing could be scored")


def test_truncated_tar(tmp_path):
    members = [(f"k{i}.{ext}", b"x" * 1000) for i in range(4) for ext in ("jpg", "txt")]
    full = _tar(tmp_path / "full.tar", members).read_bytes()
    with tarfile.open(tmp_path / "full.tar") as tf:
        k1txt, k3txt = tf.getmember("k1.txt"), tf.getmember("k3.txt")
    cuts = {  # where the file ends -> samples readable
        "inside data": (k1txt.offset_data + 10, ["k0", "k1"]),
        "inside a header": (k1txt.offset + 100, ["k0", "k1"]),
        "at a member boundary": (k1txt.offset, ["k0", "k1"]),
        "before the end marker": (k3txt.offset_data + k3txt.size, ["k0", "k1", "k2", "k3"]),
    }
    for what, (cut, keys) in cuts.items():
        p = tmp_path / "cut.tar"
        p.write_bytes(full[:cut])
        samples, report = _samples(p)
        assert [s.key for s in samples] == keys, what
        assert report.warnings and "truncated" in report.warnings[0], what  # never silent
    # a member cut off is None (not silently shortened): the row says so
    p.write_bytes(full[: k1txt.offset - 512 + 10])  # inside k1.jpg's data
    samples, _ = _samples(p)
    assert samples[1].members == {"jpg": None}
    out = prepare_sample(samples[1], SampleSpec())
    assert out.status == "decode_error" and "cut off by truncation" in out.error
    # an intact tar gives no warning
    p.write_bytes(full)
    assert _samples(p)[1].warnings == []


# -- errors: one line, the right exit code ------------------------------------


@pytest.fixture
def small_shards(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    _tar(d / "a.tar", [("k.jpg", _rgb_jpeg()), ("k.txt", CAP)])
    return d


def test_path_that_does_not_exist(tmp_path, monkeypatch, capsys):
    code, err = _cli(
        monkeypatch, capsys, "score", tmp_path / "nope", "--out", tmp_path / "o", "--no-progress"
    )
    assert code == ConfigError.exit_code == 2
    _one_line_error(err, "shard not found")
    code, err = _cli(
        monkeypatch,
        capsys,
        "score",
        "--embeddings",
        tmp_path / "nope",
        "--out",
        tmp_path / "o",
        "--beta",
        "0.1",
        "--no-progress",
    )
    assert code == InputError.exit_code == 3
    _one_line_error(err, "embeddings directory not found")
    assert not (tmp_path / "o").exists()


def test_output_not_writable(tmp_path, small_shards, monkeypatch, capsys):
    # tests run as root, so chmod would not stop us: use a path under a regular file, and /proc
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    for out in (a_file / "sub", a_file / "w.parquet", Path("/proc/nclean-test/w.parquet")):
        code, err = _cli(monkeypatch, capsys, "score", small_shards, "--out", out, "--no-progress")
        assert code == 2, (out, err)
        _one_line_error(err, "is not writable")


def test_checkpoint_of_another_architecture(tmp_path, small_shards, monkeypatch, capsys):
    from cleaner.estimator.model import CONFIG_DIR, load_estimator, save_random_checkpoint

    cfg = json.loads((CONFIG_DIR / f"{TINY}.json").read_text())
    cfg["embed_dim"], cfg["vision_cfg"]["width"], cfg["text_cfg"]["width"] = 32, 96, 96
    other = tmp_path / "nclean-robust-wide.json"
    other.write_text(json.dumps(cfg))
    ckpt = save_random_checkpoint(str(other), tmp_path / "wide.pt")
    with pytest.raises(ConfigError, match="does not fit model nclean-tiny"):
        load_estimator(TINY, str(ckpt), device="cpu")
    not_a_ckpt = tmp_path / "junk.pt"
    not_a_ckpt.write_bytes(b"not a checkpoint" * 64)
    for path in (ckpt, not_a_ckpt):
        args = ["score", small_shards, "--out", tmp_path / "o", *tiny_args(path)]
        code, err = _cli(monkeypatch, capsys, *args)
        assert code == 2
        _one_line_error(err, "does not fit model")


def _clip_retrieval(root: Path, n_img: int, n_txt: int, n_meta: int, nan_rows=()) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    img = rng.normal(size=(n_img, 8)).astype(np.float16)
    img[list(nan_rows)] = np.nan
    np.save(root / "img_emb" / "img_emb_0.npy", img)
    np.save(root / "text_emb" / "text_emb_0.npy", rng.normal(size=(n_txt, 8)).astype(np.float16))
    pq.write_table(
        pa.table({"image_path": [f"p{i}" for i in range(n_meta)]}),
        root / "metadata" / "metadata_0.parquet",
    )
    return root


def test_clip_retrieval_mismatched_rows_and_nan(tmp_path, monkeypatch, capsys):
    for i, (n_img, n_txt, n_meta) in enumerate([(5, 4, 5), (5, 5, 6), (4, 5, 5)]):
        root = _clip_retrieval(tmp_path / f"bad{i}", n_img, n_txt, n_meta)
        with pytest.raises(InputError, match="partition 0: row counts disagree"):
            EmbeddingCache(root).load("0")
    code, err = _cli(
        monkeypatch,
        capsys,
        "score",
        "--embeddings",
        tmp_path / "bad0",
        "--out",
        tmp_path / "o",
        "--beta",
        "0.1",
        "--no-progress",
    )
    assert code == 3
    _one_line_error(err, "row counts disagree")
    nan = EmbeddingCache(_clip_retrieval(tmp_path / "nan", 6, 6, 6, nan_rows=(1, 4))).load("0")
    assert nan.meta["status"].to_pylist() == [
        "ok",
        "bad_embedding",
        "ok",
        "ok",
        "bad_embedding",
        "ok",
    ]
    assert nan.meta["error"][1].as_py() == "embedding has NaN or infinite values"
    assert np.isfinite(nan.image).all() and np.isfinite(nan.text).all() and len(nan.meta) == 6


def test_sidecar_of_unknown_schema_version(tmp_path):
    from cleaner.io.sidecar import read_sidecar

    meta = {"schema_version": 999, "methods": ["osa"]}
    table = pa.table({"key": ["a"]}).replace_schema_metadata(
        {S.METADATA_KEY: json.dumps(meta).encode()}
    )
    path = tmp_path / "future.parquet"
    pq.write_table(table, path)
    with pytest.raises(
        S.SchemaError, match=r"schema version 999 is not supported \(this nclean reads 1\)"
    ):
        read_sidecar(path)
    with pytest.raises(S.SchemaError, match="schema version 999"):
        S.validate(pq.read_schema(path))
    pq.write_table(pa.table({"key": ["a"]}), path)  # no nclean metadata at all
    with pytest.raises(S.SchemaError, match="not an nclean sidecar"):
        read_sidecar(path)


# -- one CLI run over a shard folder planted with every shard-level case ------

CAP = b"a small red square"
EXPECTED = {  # (shard, key) -> status
    ("mixed.tar", "ok"): "ok",
    ("mixed.tar", "trunc_jpeg"): "decode_error",
    ("mixed.tar", "alpha"): "ok",
    ("mixed.tar", "png16"): "ok",
    ("mixed.tar", "cmyk"): "ok",
    ("mixed.tar", "gray"): "ok",
    ("mixed.tar", "gray_alpha"): "ok",
    ("mixed.tar", "exif"): "ok",
    ("mixed.tar", "tiny"): "ok",
    ("mixed.tar", "huge"): "image_too_large",
    ("mixed.tar", "thin"): "ok",
    ("mixed.tar", "bomb_png"): "image_too_large",
    ("mixed.tar", "bomb_jpeg"): "image_too_large",
    ("mixed.tar", "longcap"): "ok",
    ("mixed.tar", "latin1"): "bad_text",
    ("mixed.tar", "img"): "missing_image",  # img.v2.jpg / img.v2.txt: key 'img'
    ("mixed.tar", "dup"): "ok",  # first occurrence
    ("mixed.tar", "nc"): "ok",  # members far apart in the tar
    ("trunc.tar", "t0"): "ok",
    ("trunc.tar", "t1"): "ok",
    ("trunc.tar", "t2"): "decode_error",  # cut inside its image
    ("cut.tar", "c0"): "ok",
    ("cut.tar", "c1"): "ok",  # cut right after: no end-of-archive marker
}


def _mixed_members() -> list[tuple[str, bytes]]:
    rgb = _rgb_jpeg()
    return [
        ("nc.jpg", rgb),  # its caption comes last
        ("ok.jpg", rgb),
        ("ok.txt", CAP),
        ("trunc_jpeg.jpg", _truncated_jpeg()),
        ("trunc_jpeg.txt", CAP),
        ("alpha.png", _enc(Image.new("RGBA", (32, 24), (200, 10, 10, 128)), "PNG")),
        ("alpha.txt", CAP),
        ("png16.png", _png16()),
        ("png16.txt", CAP),
        ("cmyk.jpg", _enc(Image.new("CMYK", (32, 24), (0, 200, 200, 0)), "JPEG")),
        ("cmyk.txt", CAP),
        ("gray.jpg", _enc(Image.new("L", (32, 24), 90), "JPEG")),
        ("gray.txt", CAP),
        ("gray_alpha.png", _enc(Image.new("LA", (32, 24), (90, 100)), "PNG")),
        ("gray_alpha.txt", CAP),
        ("exif.jpg", _exif_jpeg()),
        ("exif.txt", CAP),
        ("tiny.png", _enc(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG")),
        ("tiny.txt", CAP),
        ("huge.png", _huge_png()),
        ("huge.txt", CAP),
        ("thin.png", _enc(Image.new("RGB", (1, 60_000), (9, 9, 9)), "PNG")),
        ("thin.txt", CAP),
        ("bomb_png.png", _png_claiming(100_000, 100_000)),
        ("bomb_png.txt", CAP),
        ("bomb_jpeg.jpg", _jpeg_claiming(60_000, 60_000)),
        ("bomb_jpeg.txt", CAP),
        ("longcap.jpg", rgb),
        ("longcap.txt", b"a red square " * 80_000 + b"x" * 1_000_000),
        ("latin1.jpg", rgb),
        ("latin1.txt", "caf\xe9 cr\xe8me".encode("latin-1")),
        ("img.v2.jpg", rgb),
        ("img.v2.txt", CAP),
        ("dup.jpg", rgb),
        ("dup.txt", CAP),
        ("dup.jpg", _rgb_jpeg(colour=(0, 0, 200))),
        ("dup.txt", b"the same key again"),
        ("nc.txt", CAP),
    ]


@pytest.fixture(scope="module", autouse=True)
def robust_run(request, tmp_path_factory):
    """Starts the CLI run in a background thread when the module starts (the
    subprocess spends most of its time importing torch/open_clip), so the
    in-process tests below run meanwhile; the last test waits for it. Not
    started when that test is not selected (``-k``)."""
    if not any(
        item.name == "test_cli_one_row_per_sample_with_statuses" for item in request.session.items
    ):
        yield None
        return
    tiny_ckpt = request.getfixturevalue("tiny_ckpt")
    d = tmp_path_factory.mktemp("robust")
    _tar(d / "mixed.tar", _mixed_members())
    _tar(d / "empty.tar", [])  # a valid tar with no members
    trunc = _tar(
        d / "trunc.tar",
        [
            (f"t{i}.{ext}", _rgb_jpeg() if ext == "jpg" else CAP)
            for i in range(5)
            for ext in ("jpg", "txt")
        ],
    )
    with tarfile.open(trunc) as tf:
        t2 = tf.getmember("t2.jpg")
    trunc.write_bytes(trunc.read_bytes()[: t2.offset_data + 100])  # cut inside t2.jpg's data
    cut = _tar(
        d / "cut.tar",
        [
            (f"c{i}.{ext}", _rgb_jpeg() if ext == "jpg" else CAP)
            for i in range(4)
            for ext in ("jpg", "txt")
        ],
    )
    with tarfile.open(cut) as tf:
        c2 = tf.getmember("c2.jpg")
    cut.write_bytes(cut.read_bytes()[: c2.offset])  # cut exactly at a member boundary
    out = d / "out" / "w.parquet"

    def run():
        t0 = time.perf_counter()
        proc = run_cli(
            "score",
            d,
            "--out",
            out,
            *tiny_args(tiny_ckpt),
            check=False,
            timeout=180,
        )
        return proc, out, time.perf_counter() - t0

    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(run)


def test_cli_one_row_per_sample_with_statuses(robust_run):
    proc, out, seconds = robust_run.result()
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    t = pq.read_table(out)
    rows: dict[tuple[str, str], list] = {}
    for s, k, st, e in zip(
        t["shard"].to_pylist(),
        t["key"].to_pylist(),
        t["status"].to_pylist(),
        t["error"].to_pylist(),
        strict=True,
    ):
        rows.setdefault((s, k), []).append((st, e))
    got = {k: [st for st, _ in v] for k, v in rows.items()}
    expected = {k: [v] for k, v in EXPECTED.items()}
    expected[("mixed.tar", "dup")].append("duplicate_key")  # the repeat is its own row
    assert got == expected
    assert len(t) == len(EXPECTED) + 1  # every planted sample has its row; empty.tar has none
    # what the user reads in the error column
    assert (
        rows[("mixed.tar", "img")][0][1] == "no image member among jpg,jpeg,png,webp"
    )  # img.v2.jpg: see the top
    assert rows[("mixed.tar", "dup")][1][1] == "key 'dup' appears more than once in the shard"
    assert rows[("trunc.tar", "t2")][0][1] == "image member .jpg cut off by truncation"
    assert "not UTF-8" in rows[("mixed.tar", "latin1")][0][1]
    assert all(e for k, v in rows.items() for st, e in v if st != "ok")
    # truncation is said on stderr, naming the shard (samples after a cut are unknowable)
    assert "warning: shard trunc.tar: tar truncated or corrupt" in proc.stderr
    assert "warning: shard cut.tar: tar truncated or corrupt" in proc.stderr
    print(f"CLI run over the planted shards: {seconds:.1f}s")

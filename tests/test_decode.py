import io
import json

import numpy as np
import pytest
from PIL import Image

from cleaner.io.decode import SampleSpec, decode_caption, decode_image, prepare_sample
from cleaner.io.shards import RawSample


def _img_bytes(mode="RGB", size=(32, 24), fmt="JPEG", **kw) -> bytes:
    if mode == "I;16":
        arr = (np.arange(size[0] * size[1]).reshape(size[1], size[0]) * 50).astype(np.uint16)
        img = Image.fromarray(arr)  # uint16 -> mode I;16
    else:
        img = Image.new(mode, size, (200, 10, 10, 128)[: len(mode)] if mode != "L" else 100)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,fmt",
    [
        (_img_bytes("RGB"), "JPEG"),
        (_img_bytes("RGBA", fmt="PNG"), "PNG"),
        (_img_bytes("L"), "JPEG"),
        (_img_bytes("CMYK"), "JPEG"),
        (_img_bytes("I;16", fmt="PNG"), "PNG"),
        (_img_bytes("RGB", size=(1, 1), fmt="PNG"), "PNG"),
    ],
)
def test_decode_modes_become_rgb(data, fmt):
    img, status, error = decode_image(data)
    assert status is None and img.mode == "RGB", error


def test_transparent_pixels_become_white_not_black():
    img, _, _ = decode_image(_img_bytes("RGBA", fmt="PNG"))
    r, g, b = img.getpixel((0, 0))
    assert r > 200 and g > 100  # 50% red over white, not over black


def test_sixteen_bit_png_keeps_contrast():
    img, _, _ = decode_image(_img_bytes("I;16", fmt="PNG"))
    arr = np.asarray(img)
    assert arr.min() < 10 and arr.max() > 245


def test_exif_rotation_applied():
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out, status, _ = decode_image(buf.getvalue())
    assert status is None and out.size == (20, 40)


def test_bad_images_get_statuses():
    good = _img_bytes("RGB", size=(64, 64))
    assert decode_image(good[: len(good) // 2])[1] == "decode_error"
    assert decode_image(b"<html>not an image</html>")[1] == "decode_error"
    big = _img_bytes("L", size=(4000, 4000), fmt="PNG", optimize=True)
    status = decode_image(big, max_pixels=1_000_000)[1]
    assert status == "image_too_large"


def test_captions():
    assert decode_caption({"txt": b"  a cat  "}, "txt") == ("a cat", None, None)
    assert decode_caption({}, "txt")[1] == "missing_text"
    assert decode_caption({"txt": b"   "}, "txt")[1] == "missing_text"
    assert decode_caption({"txt": b"\xff\xfe bad"}, "txt")[1] == "bad_text"
    doc = json.dumps({"caption": "from json", "meta": {"alt": "nested"}}).encode()
    assert decode_caption({"json": doc}, "json:caption")[0] == "from json"
    assert decode_caption({"json": doc}, "json:meta.alt")[0] == "nested"
    assert decode_caption({"json": doc}, "json:nope")[1] == "missing_text"
    assert decode_caption({"json": b"{broken"}, "json:caption")[1] == "bad_text"
    long = decode_caption({"txt": b"word " * 300_000}, "txt")[0]
    assert len(long) <= 10_000


def test_prepare_sample_reports_uid_and_problems():
    spec = SampleSpec(uid_field="uid")
    raw = RawSample("k", 0, {"jpg": _img_bytes(), "txt": b"cap", "json": b'{"uid": "abc"}'})
    out = prepare_sample(raw, spec, image_transform=lambda im: im.resize((8, 8)))
    assert out.status == "ok" and out.uid == "abc" and out.image.shape == (8, 8, 3)
    assert prepare_sample(RawSample("k", 0, {"txt": b"c"}), spec).status == "missing_image"
    assert (
        prepare_sample(RawSample("k", 0, {"jpg": None, "txt": b"c"}), spec).status == "decode_error"
    )
    dup = RawSample(
        "k", 1, {"jpg": _img_bytes(), "txt": b"c"}, problem="duplicate_key", problem_detail="x"
    )
    assert prepare_sample(dup, spec).status == "duplicate_key"

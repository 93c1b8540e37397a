"""Writing shapes-world samples as webdataset shards, with planted bad ones.

The only part of the world that does file I/O: image encoding, the tar
members of a sample (with its truth as json), deliberately broken samples
for reader robustness tests, and :func:`write_shards`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable
from pathlib import Path

from PIL import Image

from cleaner.worlds.shapes_samples import make_sample
from cleaner.worlds.shapes_scene import Scene

# Planted bad samples and the decode status a robust reader should give them.
PLANTED_KINDS: dict[str, str] = {
    "truncated_jpeg": "decode_error",
    "not_an_image": "decode_error",
    "missing_image": "missing_image",
    "missing_caption": "missing_text",
    "empty_caption": "missing_text",
    "non_utf8_caption": "bad_text",
    "bad_label": "bad_label",
}


def encode_image(image: Image.Image, image_format: str = "jpg", quality: int = 90) -> bytes:
    """Encode a PIL image as JPEG (``jpg``) or PNG (``png``) bytes."""
    buf = io.BytesIO()
    if image_format in ("jpg", "jpeg"):
        image.save(buf, format="JPEG", quality=quality)
    elif image_format == "png":
        image.save(buf, format="PNG", compress_level=1)  # speed over size: shards are scratch data
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    return buf.getvalue()


def _metadata(sample: dict) -> dict:
    true_caption = sample.get("true_caption", sample["caption"])
    true_label = int(sample.get("true_label", sample["label"]))
    meta = {
        "uid": sample["key"],
        "label": int(sample["label"]),
        "clean": sample["caption"] == true_caption and int(sample["label"]) == true_label,
        "true_caption": true_caption,
        "true_label": true_label,
    }
    scene = sample.get("scene")
    if isinstance(scene, Scene):
        meta["domain"] = scene.domain
        meta["scene"] = scene.to_dict()
    return meta


def _members(sample: dict, image_format: str, extra_json: bool, quality: int) -> dict:
    """The tar members of one sample, all as bytes."""
    members = {
        "__key__": sample["key"],
        image_format: encode_image(sample["image"], image_format, quality),
        "txt": sample["caption"].encode("utf-8"),
        "cls": str(int(sample["label"])).encode("ascii"),
    }
    if extra_json:
        members["json"] = json.dumps(_metadata(sample)).encode("utf-8")
    return members


def planted_samples(
    seed: int = 0, image_size: int = 64, kinds: Iterable[str] = tuple(PLANTED_KINDS)
) -> list[dict]:
    """Raw tar members (bytes) for deliberately broken samples, one per kind.

    Each starts from a valid generated sample (key ``planted_{seed}_{kind}``)
    and breaks one thing; its json names the kind in ``planted`` and the
    status a robust reader should report in ``expected_status``. Image
    members are always ``jpg`` so ``truncated_jpeg`` is truly a JPEG.
    """
    out = []
    for i, kind in enumerate(kinds):
        if kind not in PLANTED_KINDS:
            raise ValueError(
                f"unknown planted kind {kind!r}; expected one of {list(PLANTED_KINDS)}"
            )
        base = make_sample(seed, 9_000_000 + i, "default", image_size)
        base["key"] = f"planted_{seed}_{kind}"
        members = _members(base, "jpg", extra_json=True, quality=90)
        meta = _metadata(base)
        meta.update(clean=False, planted=kind, expected_status=PLANTED_KINDS[kind])
        members["json"] = json.dumps(meta).encode("utf-8")
        if kind == "truncated_jpeg":
            data = members["jpg"]
            sos = data.find(b"\xff\xda")  # cut inside the scan data, after the headers
            members["jpg"] = data[: sos + (len(data) - sos) // 2]
        elif kind == "not_an_image":
            members["jpg"] = b"this is not an image, just some text bytes\n" * 4
        elif kind == "missing_image":
            del members["jpg"]
        elif kind == "missing_caption":
            del members["txt"]
        elif kind == "empty_caption":
            members["txt"] = b""
        elif kind == "non_utf8_caption":
            members["txt"] = b"a large red \xff\xfe circle \xc3\x28 on a gray background"
        elif kind == "bad_label":
            members["cls"] = b"not-a-number"
        out.append(members)
    return out


def _tar_writer(path: Path):
    import webdataset as wds  # imported lazily: generation alone needs no webdataset

    # Fixed mtime: the same samples give byte-identical shards.
    return wds.TarWriter(str(path), encoder=False, mtime=0)


def write_corrupt_samples(
    path: str | Path,
    seed: int = 0,
    image_size: int = 64,
    kinds: Iterable[str] = tuple(PLANTED_KINDS),
) -> str:
    """Write a shard holding only planted bad samples (see :func:`planted_samples`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _tar_writer(path) as writer:
        for members in planted_samples(seed, image_size, kinds):
            writer.write(members)
    return str(path)


def write_shards(
    samples: Iterable[dict],
    out_dir: str | Path,
    shard_size: int = 1000,
    prefix: str = "",
    image_format: str = "jpg",
    extra_json: bool = True,
    jpeg_quality: int = 90,
    plant_corrupt: bool | Iterable[str] = False,
    planted_seed: int = 0,
) -> list[str]:
    """Write samples to webdataset tars ``{out_dir}/{prefix}{i:05d}.tar``.

    Members per sample: the image (``jpg`` or ``png``), ``txt`` (caption),
    ``cls`` (label as integer text) and, with ``extra_json``, ``json`` with
    ``uid``, ``label``, ``clean``, ``true_caption``, ``true_label`` (and the
    scene). ``samples`` may be a generator; it is consumed once.
    ``plant_corrupt`` (True, or a list of :data:`PLANTED_KINDS`) appends
    planted bad samples to the last shard. Returns the shard paths.
    """
    if image_format == "jpeg":
        image_format = "jpg"
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    writer = None
    count = 0
    image_size = 64  # planted samples match the size of the real ones
    try:
        for sample in samples:
            if writer is None or count == shard_size:
                if writer is not None:
                    writer.close()
                path = out / f"{prefix}{len(paths):05d}.tar"
                writer = _tar_writer(path)
                paths.append(str(path))
                count = 0
            writer.write(_members(sample, image_format, extra_json, jpeg_quality))
            image_size = sample["image"].size[0]
            count += 1
        if plant_corrupt:
            kinds = tuple(PLANTED_KINDS) if plant_corrupt is True else tuple(plant_corrupt)
            if writer is None:  # no samples at all: the planted ones get a shard of their own
                path = out / f"{prefix}{0:05d}.tar"
                writer = _tar_writer(path)
                paths.append(str(path))
            for members in planted_samples(planted_seed, image_size, kinds):
                writer.write(members)
    finally:
        if writer is not None:
            writer.close()
    return paths

"""Read back only the chosen pairs' images and captions, as small inline thumbnails.

The report shows a few dozen pairs of a sidecar that may describe millions,
so nothing here scans a dataset: the chosen rows are grouped by shard and,
for an uncompressed ``.tar``, only their members are read, by offset, after
one pass over the member headers (the order :func:`cleaner.io.shards.read_shard`
numbers samples in, so ``index`` means the same here as in the sidecar). A
``.tar.gz`` cannot be read by offset and is streamed up to the last chosen
sample. Each sample's key is checked against the sidecar's, so shards changed
since scoring show a note instead of the wrong image.

Thumbnails are JPEG data URIs: the page stays one file next to its figures,
and a rerun leaves no stale image files behind. Every failure (a shard not
among ``--shards``, an unreadable shard, an undecodable image) becomes a
note on the card, never an exception -- except ``--shards`` naming none of
the shards shown, which is a wrong option (:class:`ConfigError`).
"""

from __future__ import annotations

import base64
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from cleaner.errors import ConfigError
from cleaner.io.decode import (
    DEFAULT_IMAGE_KEYS,
    DEFAULT_MAX_PIXELS,
    decode_caption,
    decode_image,
    parse_text_key,
)

# _group_members and _load: the indexed reader's header pass and member
# loader, so that sample numbers match nclean score's exactly (no public
# function reads single samples yet).
from cleaner.io.shards import (
    RawSample,
    ShardReadError,
    ShardReport,
    _group_members,
    _load,
    expand_shards,
    read_shard,
    shard_stem,
)

THUMB_PX = 160  # longest side of a thumbnail; the page shows them at most this size
JPEG_QUALITY = 82


@dataclass
class Thumb:
    """What a card shows of one sample: an image (data URI) and caption, or why not."""

    src: str | None = None
    width: int = 0
    height: int = 0
    caption: str | None = None
    note: str | None = None  # why the image or caption is missing


def _spec_members(meta: dict) -> tuple[tuple[str, ...], str, int | None]:
    """(image keys, text key, max pixels) the sidecar was scored with."""
    spec = meta.get("sample_spec") or {}
    image_keys = tuple(spec.get("image_keys") or DEFAULT_IMAGE_KEYS)
    return image_keys, spec.get("text_key") or "txt", spec.get("max_pixels")


def shard_paths(specs: list[str], wanted: set[str]) -> dict[str, Path]:
    """Sidecar shard name -> file, for the wanted names found among ``specs``.

    The sidecar's ``shard`` column holds the file name (``00042.tar``), or the
    stem for embeddings input; both are matched. ConfigError when none is found.
    """
    found: dict[str, Path] = {}
    for p in expand_shards(specs):
        for name in (p.name, shard_stem(p)):
            if name in wanted:
                found.setdefault(name, p)
    if wanted and not found:
        shown = ", ".join(sorted(wanted)[:3])
        raise ConfigError(
            f"--shards holds none of the shards of the pairs shown (e.g. {shown}); "
            "give the shards that were scored"
        )
    return found


def read_samples_at(path: Path, indices: set[int], wanted: set[str]) -> dict[int, RawSample]:
    """The samples at ``indices`` (positions in the shard), with only ``wanted`` members."""
    if path.name.endswith((".gz", ".tgz")):
        out = {}
        last = max(indices)
        for sample in read_shard(path, wanted):
            if sample.index in indices:
                out[sample.index] = sample
            if sample.index >= last:
                break
        return out
    size = path.stat().st_size
    try:
        with tarfile.open(path, mode="r:") as tf:
            groups, repeats = _group_members(tf, ShardReport())
    except (tarfile.TarError, OSError) as exc:
        raise ShardReadError(f"{path} is not a readable tar file ({exc})") from None
    # the indexed reader's numbering: samples (repeats too) in order of first member
    order = [(infos[0].offset, key, infos) for key, infos in groups.items()]
    order += [(infos[0].offset, key, infos) for key, more in repeats.items() for infos in more]
    order.sort(key=lambda s: s[0])
    out = {}
    with open(path, "rb") as fh:
        for i in sorted(indices):
            if 0 <= i < len(order):
                _, key, infos = order[i]
                out[i] = RawSample(key=key, index=i, members=_load(fh, infos, size, wanted))
    return out


def thumbnail(data: bytes, max_pixels: int | None) -> Thumb:
    """A JPEG data URI of at most THUMB_PX on its longest side, or a note saying why not."""
    img, status, error = decode_image(data, max_pixels or DEFAULT_MAX_PIXELS, THUMB_PX)
    if img is None:
        return Thumb(note=f"{status}: {error}")
    img.thumbnail((THUMB_PX, THUMB_PX))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    uri = "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    return Thumb(src=uri, width=img.width, height=img.height)


def _sample_thumb(sample: RawSample | None, key: str, spec) -> Thumb:
    image_keys, text_key, max_pixels = spec
    if sample is None:
        return Thumb(note="no sample at this index: the shard is shorter than when scored")
    if sample.key != key:
        return Thumb(note=f"the shard changed since scoring: key {sample.key!r} at this index")
    ext = next((k for k in image_keys if sample.members.get(k) is not None), None)
    thumb = (
        thumbnail(sample.members[ext], max_pixels)
        if ext
        else Thumb(note=f"no image member among {','.join(image_keys)}")
    )
    thumb.caption, _, error = decode_caption(sample.members, text_key)
    if thumb.caption is None and thumb.note is None:
        thumb.note = f"no caption: {error}"
    return thumb


def load_thumbs(picks, specs: list[str], meta: dict) -> dict[tuple[str, int], Thumb]:
    """(shard, index) -> :class:`Thumb` for every pick, reading only those samples."""
    spec = _spec_members(meta)
    image_keys, text_key, _ = spec
    wanted = set(image_keys) | {parse_text_key(text_key)[0]}
    by_shard: dict[str, dict[int, str]] = {}
    for p in picks:
        by_shard.setdefault(p.shard, {})[p.index] = p.key
    paths = shard_paths(specs, set(by_shard))
    out: dict[tuple[str, int], Thumb] = {}
    for shard, keys in by_shard.items():
        if shard not in paths:
            for i in keys:
                out[(shard, i)] = Thumb(note=f"shard {shard} is not among --shards")
            continue
        try:
            samples = read_samples_at(paths[shard], set(keys), wanted)
        except (ShardReadError, OSError) as exc:
            for i in keys:
                out[(shard, i)] = Thumb(note=f"shard unreadable: {exc}"[:200])
            continue
        for i, key in keys.items():
            out[(shard, i)] = _sample_thumb(samples.get(i), key, spec)
    return out

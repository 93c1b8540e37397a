"""Shard specs and robust reading of webdataset tar shards.

A *shard spec* is what users type: a directory (all ``*.tar`` in it, sorted),
a glob (``shards/*.tar``), a brace pattern (``data-{000000..000099}.tar``,
as webdataset and img2dataset write them) or a list of paths.

Reading follows webdataset's conventions -- a sample is the group of tar
members sharing a key, the key being the member path up to the first dot of
its file name (``webdataset.tariterators.base_plus_ext``) -- but never raises
on bad data: a truncated or corrupt tar yields the samples that could be read
and a shard-level warning; only a file that is not a tar at all raises
:class:`ShardReadError`, which the pipeline reports by shard name.

Uncompressed tars are read by first listing member headers (cheap: tarfile
seeks over the data) and then reading the wanted members by offset, so
samples whose members are not contiguous are still assembled correctly and
only the members we need are read.

Member names that are not UTF-8 (latin-1 bytes, as old tar tools write
them) reach us as tarfile decodes them, each undecodable byte a lone
surrogate (``surrogateescape``) -- text Parquet cannot store. Such a key is
written with each of those bytes as ``\\xHH`` (:func:`sample_key`): valid
UTF-8, the same in both readers, and found again by ``nclean filter``
(which reads shards through this module); webdataset's ``__key__`` for
such a sample maps to it through the same function.
"""

from __future__ import annotations

import glob
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import braceexpand

from cleaner.errors import ConfigError, InputError


class ShardReadError(InputError):
    """A whole shard could not be opened as a tar file."""


def expand_shards(specs: str | Iterable[str]) -> list[Path]:
    """Turn user shard specs into a list of existing tar paths.

    Order: directories are sorted; globs are sorted; brace patterns keep
    their expansion order; several specs are concatenated in the order given.

    Raises
    ------
    ConfigError
        if a spec matches nothing, a path does not exist, a file name is not
        UTF-8 (it is stored as the ``shard`` column), or two shards share
        a file name (sidecar parts are named after the shard's file name, so
        names must be unique).
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [str(specs)]
    paths: list[Path] = []
    for spec in specs:
        spec = str(spec)
        expanded = list(braceexpand.braceexpand(spec)) if "{" in spec else [spec]
        for item in expanded:
            p = Path(item)
            if p.is_dir():
                found = sorted(p.glob("*.tar"))
                if not found:
                    raise ConfigError(f"no *.tar files in directory {item}")
                paths.extend(found)
            elif any(c in item for c in "*?["):
                found = sorted(Path(x) for x in glob.glob(item))
                if not found:
                    raise ConfigError(f"no files match {item}")
                paths.extend(found)
            elif p.exists():
                paths.append(p)
            else:
                raise ConfigError(f"shard not found: {item}")
    if not paths:
        raise ConfigError("no shards given")
    seen: dict[str, Path] = {}
    for p in paths:
        if sample_key(p.name) != p.name:
            # the shard's name is a column of every row and names its part
            raise ConfigError(
                f"shard file name {sample_key(p.name)} is not valid UTF-8 (in {p.parent}); "
                "rename the file"
            )
        if p.name in seen and seen[p.name].resolve() != p.resolve():
            raise ConfigError(
                f"two shards share the file name {p.name} ({seen[p.name]} and {p}); "
                "sidecar parts are named after shards, so names must be unique"
            )
        seen[p.name] = p
    # the same file listed twice would score its samples twice
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    if len(unique) != len(paths):
        raise ConfigError("a shard is listed more than once")
    return paths


def shard_stem(path: str | Path) -> str:
    """``/x/00042.tar`` -> ``00042`` (also strips ``.tar.gz`` and ``.tgz``)."""
    name = Path(path).name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class RawSample:
    """One sample's wanted members as bytes, before any decoding.

    ``members`` maps extension (lower-case, e.g. ``jpg``) to bytes, or to
    ``None`` when the member's data is cut off by a truncated file.
    ``problem`` names a structural issue found while grouping (e.g.
    ``duplicate_key``) that makes the sample unusable.
    """

    key: str
    index: int
    members: dict[str, bytes | None] = field(default_factory=dict)
    problem: str | None = None
    problem_detail: str | None = None


@dataclass
class ShardReport:
    """Shard-level facts collected while reading (shown in the summary)."""

    warnings: list[str] = field(default_factory=list)


def read_shard(
    path: str | Path,
    wanted: Iterable[str] | None = None,
    report: ShardReport | None = None,
) -> Iterator[RawSample]:
    """Yield the samples of one tar shard, in order of first appearance.

    Parameters
    ----------
    path : the tar file.
    wanted : extensions to load (lower-case); ``None`` loads every member.
        Other members still define samples (a sample with only unwanted
        members is yielded with no members, so nothing is dropped silently).
    report : filled with shard-level warnings (truncation, corrupt headers).

    Raises
    ------
    ShardReadError
        if the file cannot be opened as a tar at all.
    """
    path = Path(path)
    report = report if report is not None else ShardReport()
    wanted_set = None if wanted is None else {w.lower() for w in wanted}
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ShardReadError(f"cannot read shard {path}: {exc.strerror or exc}") from None
    if size == 0:
        report.warnings.append("empty file (0 bytes)")
        return
    if path.name.endswith((".gz", ".tgz")):
        yield from _read_streaming(path, wanted_set, report)
    else:
        yield from _read_indexed(path, size, wanted_set, report)


def sample_key(name: str) -> str:
    """A key or member name as tarfile/webdataset decode it -> the text nclean stores.

    Valid UTF-8 is returned unchanged. A byte that is not UTF-8 arrives as a
    lone surrogate (``surrogateescape``: U+DC80..U+DCFF) and is written as
    ``\\xHH``, e.g. latin-1 ``caf\\xe9`` (``b"caf\\xe9"``) -> ``"caf\\\\xe9"``; any
    other lone surrogate as ``\\uDXXX``. Applying it twice changes nothing,
    so a filtered copy (written under this key) scores to the same key.
    Literal backslashes are kept, so a UTF-8 name that spells ``\\xe9`` in
    one shard with the bytes it stands for is a repeated key there: a
    ``duplicate_key`` row, as for any key seen twice, never a lost sample.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return "".join(_escape_surrogate(c) for c in name)


def _escape_surrogate(c: str) -> str:
    code = ord(c)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\u{code:04x}" if 0xD800 <= code <= 0xDFFF else c


def _split_name(name: str) -> tuple[str, str] | None:
    # keyed by the escaped name: an escaped byte is never "." or "/", so
    # splitting it gives the same key and extension as splitting the bytes
    # imported here: webdataset pulls in torch (~0.6 GB resident), which a
    # score of precomputed embeddings never needs
    from webdataset.tariterators import base_plus_ext

    parts = base_plus_ext(sample_key(name))
    if parts is None or parts[0] is None:
        return None
    return parts[0], parts[1].lower()


def _read_indexed(
    path: Path, size: int, wanted: set[str] | None, report: ShardReport
) -> Iterator[RawSample]:
    try:
        tf = tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as exc:
        raise ShardReadError(f"{path} is not a readable tar file ({exc})") from None
    with tf:
        # Pass 1: headers only. Group members by key, keeping first-appearance order.
        groups, repeats = _group_members(tf, report)
        # Pass 2: read wanted members by offset, samples (repeats included)
        # in the order their first member appears, so `index` is the
        # sample's position in the shard -- the number the streaming reader
        # gives a .tar.gz copy of it when each sample's members are
        # contiguous (webdataset's layout). Members of one key scattered
        # through the tar are one sample here but several (flagged) there.
        samples = [(infos[0].offset, key, infos, False) for key, infos in groups.items()]
        samples += [
            (infos[0].offset, key, infos, True) for key, extra in repeats.items() for infos in extra
        ]
        samples.sort(key=lambda s: s[0])
        with open(path, "rb") as fh:
            for index, (_, key, infos, repeat) in enumerate(samples):
                sample = RawSample(key=key, index=index, members=_load(fh, infos, size, wanted))
                if repeat:
                    sample.problem = "duplicate_key"
                    sample.problem_detail = f"key {key!r} appears more than once in the shard"
                yield sample


def _group_members(
    tf: tarfile.TarFile, report: ShardReport
) -> tuple[dict[str, list[tarfile.TarInfo]], dict[str, list[list[tarfile.TarInfo]]]]:
    """Member headers by key (first-appearance order), and the extra groups of repeated keys."""
    groups: dict[str, list[tarfile.TarInfo]] = {}
    # key -> extra groups for a key that repeats (same key and extension again)
    repeats: dict[str, list[list[tarfile.TarInfo]]] = {}
    try:
        for info in tf:
            if not info.isfile():
                continue
            split = _split_name(info.name)
            if split is None:
                report.warnings.append(f"member without extension skipped: {info.name!r}")
                continue
            key, ext = split
            group = groups.setdefault(key, [])
            if _has_ext(group, ext):
                # The same key and extension again: a second sample with a
                # repeated key. Keep it as its own (flagged) row.
                extra = repeats.setdefault(key, [])
                if not extra or _has_ext(extra[-1], ext):
                    extra.append([])
                extra[-1].append(info)
                continue
            group.append(info)
    except (tarfile.TarError, OSError, EOFError) as exc:
        report.warnings.append(f"tar truncated or corrupt after {len(groups)} samples: {exc}")
    else:
        _check_end_marker(tf, len(groups), report)
    return groups, repeats


def _check_end_marker(tf: tarfile.TarFile, n_samples: int, report: ShardReport) -> None:
    # tarfile ends iteration *silently* on a cut at a member boundary
    # or inside a header, and on a corrupt header after the first:
    # the rest of the shard would vanish without a word. A complete
    # tar ends with a zero block where iteration stopped; say so if not.
    tf.fileobj.seek(tf.offset)
    block = tf.fileobj.read(tarfile.BLOCKSIZE)
    if len(block) < tarfile.BLOCKSIZE or block.count(0) != tarfile.BLOCKSIZE:
        report.warnings.append(
            f"tar truncated or corrupt after {n_samples} samples: no end-of-archive "
            f"marker at byte {tf.offset}; any samples after it are lost"
        )


def _has_ext(infos: list[tarfile.TarInfo], ext: str) -> bool:
    return any(_split_name(m.name)[1] == ext for m in infos)


def _load(fh, infos: list[tarfile.TarInfo], size: int, wanted: set[str] | None) -> dict:
    members: dict[str, bytes | None] = {}
    for info in infos:
        ext = _split_name(info.name)[1]
        if wanted is not None and ext not in wanted:
            continue
        if info.offset_data + info.size > size:
            members[ext] = None  # cut off by truncation
            continue
        fh.seek(info.offset_data)
        members[ext] = fh.read(info.size)
    return members


def _read_streaming(
    path: Path, wanted: set[str] | None, report: ShardReport
) -> Iterator[RawSample]:
    # Compressed tars cannot be read by offset; group consecutive members as
    # webdataset does, and flag a key that comes back later.
    try:
        tf = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError) as exc:
        raise ShardReadError(f"{path} is not a readable tar file ({exc})") from None
    seen: set[str] = set()
    current: RawSample | None = None
    current_exts: set[str] = set()  # every member extension of `current`, wanted or not
    index = 0
    with tf:
        try:
            for info in tf:
                if not info.isfile():
                    continue
                split = _split_name(info.name)
                if split is None:
                    report.warnings.append(f"member without extension skipped: {info.name!r}")
                    continue
                key, ext = split
                # a new sample starts at a new key -- or at the same key and
                # extension again right after it (a whole repeated sample),
                # which must not overwrite the first one's members
                if current is None or key != current.key or ext in current_exts:
                    if current is not None:
                        yield current
                    current = RawSample(key=key, index=index)
                    current_exts = set()
                    index += 1
                    if key in seen:
                        current.problem = "duplicate_key"
                        current.problem_detail = f"key {key!r} appears more than once in the shard"
                    seen.add(key)
                current_exts.add(ext)
                if wanted is None or ext in wanted:
                    data = tf.extractfile(info)
                    current.members[ext] = data.read() if data is not None else None
        except (tarfile.TarError, OSError, EOFError) as exc:
            report.warnings.append(f"tar truncated or corrupt after {index} samples: {exc}")
    if current is not None:
        yield current

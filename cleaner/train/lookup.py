"""How samples are matched to sidecar rows, and what a failed match says.

Vectorised row finding (by ``(shard, key)`` pair, by key, by uid) with
pyarrow's ``index_in``, the shard-name rule that turns a path, URL or
``pipe:`` command into the sidecar's ``shard`` value, the grouping of rows by
shard the streaming stages use, and the :class:`SidecarMismatchError`
messages with counts.

Which of the three identifies a sample is the sidecar's ``join`` (in its
``nclean`` metadata, written by ``nclean score``): ``"shard_key"`` when the
sidecar's ``shard`` column names the tars (scored from shards, or from
``nclean embed`` output), ``"key"`` or ``"uid"`` when it was scored from
another tool's embeddings (clip-retrieval), whose partitions span shards,
so the shard is unknown but keys (img2dataset's embed the shard id) or
DataComp uids are unique across the dataset. A sidecar without ``join``
(older nclean) joins by ``(shard, key)``. A key that could be either of two
samples is an :class:`AmbiguousKeyError` naming the keys, never a guess.

A module of its own so that :class:`~cleaner.train.verdicts.Verdicts`, the
webdataset stages and the map-style helpers share one matching rule and one
error wording without importing each other.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cleaner.errors import NcleanError

ON_MISSING = ("error", "drop", "zero")
OPT_OUT_HINT = "on_missing='drop' or 'zero' opts out"  # the CLI swaps in its own flag
SHOWN = 5  # how many shard names an error message lists


JOINS = {"shard_key": "(shard, key)", "key": "key", "uid": "uid"}


class SidecarMismatchError(NcleanError, LookupError):
    """Samples have no row in the sidecar (wrong sidecar, or other shards)."""


class AmbiguousKeyError(SidecarMismatchError, ValueError):
    """A sample's key names more than one sample (in the sidecar or the shards)."""


def join_of(metas: list[dict], sources: list[str]) -> str:
    """The one join rule of the sidecars loaded together (ValueError if they differ)."""
    joins = [m.get("join", "shard_key") for m in metas] or ["shard_key"]
    unknown = [j for j in joins if j not in JOINS]
    if unknown:
        raise ValueError(f"sidecar join {unknown[0]!r} is not one of {', '.join(JOINS)}")
    if len(set(joins)) > 1:
        said = "; ".join(
            f"{src} by {JOINS[j]}" for src, j in zip(sources or ["?"] * len(joins), joins)
        )
        raise ValueError(f"these sidecars find their samples differently ({said}); load them apart")
    return joins[0]


def repeated(values) -> list:
    """Non-null values that occur more than once."""
    counts = pc.value_counts(pc.drop_null(values))
    return counts.filter(pc.greater(counts.field("counts"), 1)).field("values").to_pylist()


def ambiguous_message(keys: list, where: str, join: str) -> str:
    shown = ", ".join(repr(k) for k in keys[:SHOWN])
    more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
    what = ("uid" if join == "uid" else "key") + ("s are" if len(keys) > 1 else " is")
    return (
        f"{len(keys)} {what} ambiguous, {where}: {shown}{more}; "
        f"this sidecar finds samples by {JOINS[join]} alone, so they cannot be told apart"
    )


def check_query_unique(shard_arr: pa.Array, id_arr: pa.Array, join: str) -> None:
    """AmbiguousKeyError if one id is asked for from more than one shard."""
    pairs = pa.table({"s": shard_arr, "k": id_arr}).group_by(["s", "k"]).aggregate([])
    clash = repeated(pairs.column("k"))
    if clash:
        raise AmbiguousKeyError(ambiguous_message(clash, "each is in more than one shard", join))


_TAR_TOKEN = re.compile(r"[^\s'\"]+?\.(?:tar\.gz|tgz|tar)(?=$|[\s'\"?#])")


def shard_name(url: str | os.PathLike) -> str:
    """The shard's file name, as the sidecar's ``shard`` column holds it.

    ``/data/00042.tar`` -> ``00042.tar``; also handles URLs with a query
    (``https://host/x/00042.tar?sig=...``) and webdataset ``pipe:`` URLs
    (``pipe:aws s3 cp s3://b/00042.tar -``) by taking the last ``*.tar``
    (``.tgz``, ``.tar.gz``) token.
    """
    text = os.fspath(url)
    tokens = _TAR_TOKEN.findall(text)
    if tokens:
        text = tokens[-1]
    else:
        text = text.split("?", 1)[0].split("#", 1)[0]
    return text.rstrip("/").rsplit("/", 1)[-1]


def check_on_missing(on_missing: str) -> None:
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, not {on_missing!r}")


def as_str_array(values, what: str) -> pa.Array:
    """``values`` (a sequence or arrow array of strings) as one string array."""
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        if isinstance(values, (str, bytes)):
            raise TypeError(f"{what} must be a sequence of strings, not a single string")
        arr = pa.array(list(values), type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.cast(pa.string())


def normalise_shards(arr: pa.Array) -> pa.Array:
    """Paths and URLs among shard names replaced by their :func:`shard_name`."""
    encoded = arr.dictionary_encode()
    names = encoded.dictionary.to_pylist()
    fixed = [
        n if n is None or ("/" not in n and "?" not in n and ":" not in n) else shard_name(n)
        for n in names
    ]
    if fixed == names:
        return arr
    return pa.array(fixed, type=pa.string()).take(encoded.indices)


def reversed_values(column) -> pa.Array:
    """A column back to front, as one array (for :func:`find_last`)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.take(pa.array(np.arange(len(arr) - 1, -1, -1, dtype=np.int64)))


def find_first(query: pa.Array, value_set: pa.Array) -> np.ndarray:
    """First row of ``value_set`` equal to each query value; -1 if none (nulls never match)."""
    if len(value_set) == 0 or len(query) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    pos = pc.index_in(query, value_set=value_set, skip_nulls=True)
    return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def find_last(query: pa.Array, value_set_rev: pa.Array) -> np.ndarray:
    """Last row of the (un-reversed) value set equal to each query value; -1 if none.

    ``index_in`` finds the first match, so it runs on the reversed values.
    Nulls never match (a null uid is not an id).
    """
    pos = find_first(query, value_set_rev)
    return np.where(pos >= 0, len(value_set_rev) - 1 - pos, -1)


def group_by_shard(table: pa.Table) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
    """(shard name -> code, row order grouped by shard, group offsets)."""
    encoded = table.column("shard").combine_chunks().dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    names = encoded.dictionary.to_pylist()
    order = np.argsort(codes, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
    return {n: i for i, n in enumerate(names)}, order, offsets


def check_keys_unambiguous(key_arr: pa.Array, rows: np.ndarray, table: pa.Table) -> None:
    """ValueError if a found key has rows in more than one shard."""
    found = rows >= 0
    if not found.any():
        return
    # a key whose first and last rows lie in different shards is ambiguous
    first = find_first(key_arr, table.column("key").combine_chunks())
    shard_col = table.column("shard")
    a = shard_col.take(pa.array(first[found])).to_numpy(zero_copy_only=False)
    b = shard_col.take(pa.array(rows[found])).to_numpy(zero_copy_only=False)
    clash = a != b
    if clash.any():
        example = key_arr.filter(pa.array(found)).to_pylist()[int(np.flatnonzero(clash)[0])]
        raise ValueError(
            f"{int(clash.sum())} keys have rows in more than one shard (e.g. {example!r}); "
            "look them up by (shard, key) pairs"
        )


def shown_missing(values: pa.Array, missing: np.ndarray) -> str:
    """The first few ids that have no row, for a message."""
    return ", ".join(repr(v) for v in values.filter(pa.array(missing)).to_pylist()[:SHOWN])


def pairs_mismatch_message(
    missing: np.ndarray, shard_arr: pa.Array, known: set[str], what: str
) -> str:
    """How many samples have no row, counted per shard (most first)."""
    names = shard_arr.filter(pa.array(missing)).to_numpy(zero_copy_only=False)
    uniq, counts = np.unique(names, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    parts = []
    for i in order[:SHOWN]:
        note = "" if uniq[i] in known else ", shard not in the sidecar"
        parts.append(f"{uniq[i]} ({counts[i]}{note})")
    more = f" and {len(uniq) - SHOWN} more" if len(uniq) > SHOWN else ""
    return (
        f"{int(missing.sum())} of {len(missing)} {what} have no row in the sidecar "
        f"(shards: {', '.join(parts)}{more}); is it the sidecar of these shards? " + OPT_OUT_HINT
    )


class KeyIndex(dict):
    """key -> row over the whole sidecar, for the streaming stages of a
    sidecar that joins by key: a repeated key is an error, not the last row."""

    def __init__(self, rows: dict, ambiguous: set, join: str):
        super().__init__(rows)
        self.ambiguous, self.join = ambiguous, join

    def get(self, key, default=None):
        if key in self.ambiguous:
            raise AmbiguousKeyError(
                ambiguous_message([key], "it has several rows in the sidecar", self.join)
            )
        return super().get(key, default)


class IdIndex:
    """Rows by the one column that identifies a sample (``key`` or ``uid``)
    for a sidecar whose ``join`` is not ``(shard, key)``."""

    def __init__(self, table: pa.Table, join: str):
        self.join = join
        column = table.column("key" if join == "key" else "uid")
        self.values_rev = reversed_values(column)
        self.ambiguous = set(repeated(column))
        self._dict: KeyIndex | None = None

    def rows(self, shard_arr: pa.Array, id_arr: pa.Array) -> np.ndarray:
        """Row per sample (-1: none); AmbiguousKeyError when one id is asked
        for from two shards or has several rows in the sidecar."""
        check_query_unique(shard_arr, id_arr, self.join)
        rows = find_last(id_arr, self.values_rev)
        if self.ambiguous:
            found = pc.unique(id_arr.filter(pa.array(rows >= 0))).to_pylist()
            clash = [v for v in found if v in self.ambiguous]
            if clash:
                where = "each has several rows in the sidecar"
                raise AmbiguousKeyError(ambiguous_message(clash, where, self.join))
        return rows

    def as_dict(self) -> KeyIndex:
        """key (or uid) -> (last) row, built once, for the streaming stages."""
        if self._dict is None:
            keys = reversed_values(self.values_rev).to_pylist()
            self._dict = KeyIndex(
                {k: i for i, k in enumerate(keys) if k is not None}, self.ambiguous, self.join
            )
        return self._dict


def align_ids(
    join: str, side_shards, side_keys, shards, keys, side_uids=None, uids=None
) -> tuple[list, list]:
    """(an id per sidecar row, an id per sample) for aligning a sidecar held
    in memory to decoded samples (the trainer's join), by ``join``; a uid
    join needs both sides' uids (the samples' from their .json)."""
    if join == "shard_key":
        return list(zip(side_shards, side_keys)), list(zip(shards, keys))
    if join == "uid":
        if uids is None or side_uids is None:
            raise SidecarMismatchError(
                "this sidecar finds its samples by uid: decode the samples' uids (.json) to join"
            )
        side_keys, keys = side_uids, uids
    key_arr = as_str_array(keys, "keys")
    check_query_unique(as_str_array(shards, "shards"), key_arr, join)
    clash = set(repeated(as_str_array(side_keys, "keys"))) & set(key_arr.to_pylist())
    if clash:
        where = "each has several rows in the sidecar"
        raise AmbiguousKeyError(ambiguous_message(sorted(clash), where, join))
    return list(side_keys), key_arr.to_pylist()

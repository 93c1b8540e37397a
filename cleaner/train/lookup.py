"""How samples are matched to sidecar rows, and what a failed match says.

Vectorised row finding (by ``(shard, key)`` pair, by key, by uid) with
pyarrow's ``index_in``, the shard-name rule that turns a path, URL or
``pipe:`` command into the sidecar's ``shard`` value, the grouping of rows by
shard the streaming stages use, and the :class:`SidecarMismatchError`
messages with counts.

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


class SidecarMismatchError(NcleanError, LookupError):
    """Samples have no row in the sidecar (wrong sidecar, or other shards)."""


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

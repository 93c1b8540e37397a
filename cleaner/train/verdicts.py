"""The rows of one or more sidecars, ready to join to samples: :class:`Verdicts`.

:class:`Verdicts` loads and validates sidecars, finds the row of each sample
(by ``(shard, key)``, key or uid), and turns an expression into a keep mask or
a weight per row. The rules it applies (failed rows drop out, the last of
repeated rows wins, nulls count as not kept / weight 0) are described in the
:mod:`cleaner.train.weights` docstring, the public entry point.

A module of its own because everything that consumes verdicts (webdataset
stages, map-style samplers, ``nclean filter``) builds on this one class; the
expression language (:mod:`cleaner.train.expressions`) and the row matching
(:mod:`cleaner.train.lookup`) live beside it so it stays readable.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleaner.io.sidecar import read_sidecar
from cleaner.train.expressions import evaluate_table
from cleaner.train.lookup import (
    OPT_OUT_HINT,
    IdIndex,
    SidecarMismatchError,
    as_str_array,
    check_keys_unambiguous,
    check_on_missing,
    find_last,
    group_by_shard,
    join_of,
    normalise_shards,
    pairs_mismatch_message,
    reversed_values,
    shown_missing,
)

BASE_COLUMNS = ("key", "shard", "index", "uid", "status")


class Verdicts:
    """The rows of one or more sidecars, ready to join to samples.

    Parameters
    ----------
    table : pyarrow.Table
        Sidecar rows: at least ``key``, ``shard``, ``index``, ``uid``,
        ``status``. Usually built by :meth:`load`.
    metadata : list of dict, optional
        The ``nclean`` metadata of each sidecar loaded.
    sources : list of str, optional
        Where the rows came from (for messages).

    Notes
    -----
    Row numbers returned by the lookups index :attr:`table` (sidecars
    concatenated in the order given). Lookups by (shard, key) and by uid
    build a hash table once per call; the webdataset stages instead keep a
    small per-shard dictionary, so streaming costs O(rows of one shard).
    """

    def __init__(
        self, table: pa.Table, metadata: list[dict] | None = None, sources: list[str] | None = None
    ):
        missing = [c for c in BASE_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(f"verdict table lacks column(s) {', '.join(missing)}")
        self.table = table
        self.metadata = list(metadata or [])
        self.sources = list(sources or [])
        # what identifies a sample: "shard_key", "key" or "uid" (cleaner.train.lookup)
        self.join = join_of(self.metadata, self.sources)
        self._ids: IdIndex | None = None
        self._pairs_rev: pa.Array | None = None
        self._uids_rev: pa.Array | None = None
        self._keys_rev: pa.Array | None = None
        self._by_shard: tuple[dict[str, int], np.ndarray, np.ndarray] | None = None
        self._shard_cache: dict[str, dict[str, int]] = {}
        self._failed: np.ndarray | None = None

    # -- loading -------------------------------------------------------------

    @classmethod
    def load(
        cls,
        paths: str | os.PathLike | Iterable[str | os.PathLike],
        columns: list[str] | None = None,
    ) -> Verdicts:
        """Read and validate sidecars (files or folders of parts) into one table.

        Parameters
        ----------
        paths : a path, or several; each a ``.parquet`` sidecar or a folder
            of parts as ``nclean score --out DIR/`` writes them.
        columns : method columns to load (the base columns always are);
            ``None`` loads all. Saves memory on large sidecars.

        Raises
        ------
        cleaner.io.schema.SchemaError
            if a file is not a valid sidecar.
        ValueError
            if two sidecars hold rows of the same shard (almost always the
            same data given twice, e.g. ``w.parquet`` and ``w.parts/``).
        """
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [Path(p) for p in paths]
        if not paths:
            raise ValueError("no sidecar given")
        want = None if columns is None else list(dict.fromkeys([*BASE_COLUMNS, *columns]))
        tables, metas = _read_sidecars(paths, want)
        # sidecars scored with different --methods have different columns: missing ones become null
        table = (
            tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        )
        return cls(table, metas, [str(p) for p in paths])

    # -- basics --------------------------------------------------------------

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        return f"Verdicts({len(self)} rows, {len(self.shards)} shards, from {', '.join(self.sources) or 'a table'})"

    @property
    def columns(self) -> list[str]:
        return list(self.table.column_names)

    @property
    def shards(self) -> list[str]:
        """Shard names present, in first-appearance order."""
        return list(self._shard_groups()[0])

    def column(self, name: str) -> np.ndarray:
        """One column as numpy (nulls: NaN for numbers, None for text and booleans)."""
        if name not in self.table.column_names:
            raise KeyError(f"no column {name!r} (columns: {', '.join(self.table.column_names)})")
        return self.table.column(name).to_numpy(zero_copy_only=False)

    def failed(self) -> np.ndarray:
        """Boolean per row: True where ``status`` is not ``ok``."""
        if self._failed is None:
            ok = pc.fill_null(pc.equal(self.table.column("status"), "ok"), False)
            self._failed = ~ok.to_numpy(zero_copy_only=False).astype(bool)
        return self._failed

    # -- expressions ---------------------------------------------------------

    def evaluate(self, expr: str, fill_null: bool = True):
        """Evaluate ``expr`` on every row.

        Parameters
        ----------
        expr : an expression over the columns (see :mod:`cleaner.train.weights`
            for the grammar and null rules), e.g. ``sdd_keep and osa_weight > 0``.
        fill_null : resolve nulls as the consumers do: unknown -> False for
            true/false results, null or NaN -> 0.0 for numbers. ``False``
            returns the pyarrow array with its nulls.

        Returns
        -------
        numpy.ndarray
            bool for true/false expressions, float64 for numeric ones (one
            value per row), or a ``pyarrow.Array`` with ``fill_null=False``.

        Raises
        ------
        ValueError
            for anything outside the grammar, unknown columns, type errors, or
            an expression that gives text.
        """
        return evaluate_table(self.table, expr, fill_null)

    def mask(self, expr: str | None, keep_failed: bool = False) -> np.ndarray:
        """Keep (True) / drop per row: ``expr`` must be true/false; ``None`` keeps all.

        Rows whose status is not ``ok`` are dropped unless ``keep_failed``.
        """
        if expr is None:
            keep = np.ones(len(self), dtype=bool)
        else:
            value = self.evaluate(expr)
            if value.dtype != bool:
                raise ValueError(
                    f"a keep/drop expression must be true/false, {expr!r} is a number (compare it, e.g. {expr} > 0)"
                )
            keep = value
        return keep if keep_failed else keep & ~self.failed()

    def weights(self, expr: str, keep_failed: bool = False) -> np.ndarray:
        """A float64 weight per row: a number, or true/false as 1/0.

        Null and NaN weigh 0; rows whose status is not ``ok`` weigh 0 unless
        ``keep_failed``. Values are not checked here (a sampler checks that
        they are finite and non-negative).
        """
        value = self.evaluate(expr).astype(np.float64)
        if not keep_failed:
            value = np.where(self.failed(), 0.0, value)
        return value

    # -- lookups -------------------------------------------------------------

    def lookup(self, shards, keys, on_missing: str = "error", uids=None) -> np.ndarray:
        """Row of each sample, by the sidecar's :attr:`join`: its (shard, key)
        pair, its key alone, or its uid (``uids``, one per sample).

        Parameters
        ----------
        shards : shard file names (``00042.tar``) or paths/URLs (their file
            name is used, see :func:`~cleaner.train.lookup.shard_name`), one per sample.
        keys : webdataset keys (``__key__``), one per sample.
        on_missing : ``"error"`` raises :class:`SidecarMismatchError` naming
            how many samples have no row and in which shards; ``"drop"`` or
            ``"zero"`` return -1 for them.

        Returns
        -------
        numpy.ndarray of int64, one row number per pair (-1: no row).
        """
        check_on_missing(on_missing)
        shard_arr = normalise_shards(as_str_array(shards, "shards"))
        key_arr = as_str_array(keys, "keys")
        if len(shard_arr) != len(key_arr):
            raise ValueError(f"{len(shard_arr)} shards for {len(key_arr)} keys")
        if self.join != "shard_key":
            if self.join == "uid" and uids is None:
                raise ValueError("this sidecar finds its samples by uid: pass uids=")
            ids = key_arr if self.join == "key" else as_str_array(uids, "uids")
            rows = self._id_index().rows(shard_arr, ids)
            known = set(pc.unique(shard_arr).to_pylist())  # a shard name is not a join key here
        else:
            if self._pairs_rev is None:
                pairs = pc.binary_join_element_wise(
                    self.table.column("shard"), self.table.column("key"), "\x00"
                )
                self._pairs_rev = reversed_values(pairs)
            query = pc.binary_join_element_wise(shard_arr, key_arr, "\x00")
            rows = find_last(query, self._pairs_rev)
            known = set(self._shard_groups()[0])
        if on_missing == "error" and (rows < 0).any():
            raise SidecarMismatchError(
                pairs_mismatch_message(rows < 0, shard_arr, known, "samples")
            )
        return rows

    def lookup_uids(self, uids, on_missing: str = "error") -> np.ndarray:
        """Row of each uid (null uids in the sidecar never match); see :meth:`lookup`."""
        check_on_missing(on_missing)
        uid_arr = as_str_array(uids, "uids")
        if self._uids_rev is None:
            self._uids_rev = reversed_values(self.table.column("uid"))
        rows = find_last(uid_arr, self._uids_rev)
        if on_missing == "error" and (rows < 0).any():
            missing = rows < 0
            raise SidecarMismatchError(
                f"{int(missing.sum())} of {len(rows)} uids have no row in the sidecar "
                f"(e.g. {shown_missing(uid_arr, missing)}); "
                f"was it scored with --uid-field? {OPT_OUT_HINT}"
            )
        return rows

    def lookup_keys(self, keys, on_missing: str = "error") -> np.ndarray:
        """Row of each key alone, for datasets whose keys are unique across shards.

        Raises :class:`ValueError` if a key has rows in more than one shard
        (pass (shard, key) pairs to :meth:`lookup` instead).
        """
        check_on_missing(on_missing)
        key_arr = as_str_array(keys, "keys")
        if self._keys_rev is None:
            self._keys_rev = reversed_values(self.table.column("key"))
        rows = find_last(key_arr, self._keys_rev)
        check_keys_unambiguous(key_arr, rows, self.table)
        found = rows >= 0
        if on_missing == "error" and not found.all():
            missing = ~found
            raise SidecarMismatchError(
                f"{int(missing.sum())} of {len(rows)} keys have no row in the sidecar "
                f"(e.g. {shown_missing(key_arr, missing)}); " + OPT_OUT_HINT
            )
        return rows

    def _id_index(self) -> IdIndex:
        if self._ids is None:
            self._ids = IdIndex(self.table, self.join)
        return self._ids

    # -- per-shard index for streaming --------------------------------------

    def _shard_groups(self) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """(shard name -> code, row order grouped by shard, group offsets)."""
        if self._by_shard is None:
            self._by_shard = group_by_shard(self.table)
        return self._by_shard

    def rows_of_shard(self, shard: str) -> np.ndarray:
        """Row numbers of one shard (file name), in table order; empty if absent."""
        codes, order, offsets = self._shard_groups()
        code = codes.get(shard)
        if code is None:
            return np.zeros(0, dtype=np.int64)
        return order[offsets[code] : offsets[code + 1]]

    def shard_index(self, shard: str) -> dict[str, int] | None:
        """key -> row for one shard (the last row for a repeated key), or None
        if the sidecar has no rows for it. A few shards are cached. A sidecar
        that joins by key gives every shard one index over all its keys."""
        if self.join != "shard_key":
            return self._id_index().as_dict()
        cached = self._shard_cache.get(shard)
        if cached is not None:
            return cached
        rows = self.rows_of_shard(shard)
        if len(rows) == 0:
            return None
        keys = self.table.column("key").take(pa.array(rows)).to_pylist()
        # later rows overwrite: the "last row" rule
        index = dict(zip(keys, rows.tolist(), strict=True))
        if len(self._shard_cache) >= 8:  # workers read a few shards at a time
            self._shard_cache.pop(next(iter(self._shard_cache)))
        self._shard_cache[shard] = index
        return index

    def __getstate__(self):
        # caches are rebuilt on demand (DataLoader workers pickle the stages)
        state = self.__dict__.copy()
        cleared = ("_pairs_rev", "_uids_rev", "_keys_rev", "_by_shard", "_ids")
        state.update(dict.fromkeys(cleared), _shard_cache={})
        return state


def _schema_names(path: Path) -> list[str]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return pq.read_schema(files[0]).names if files else []


def _read_sidecars(paths: list[Path], want: list[str] | None) -> tuple[list, list]:
    """Each sidecar's (table, metadata); no shard may be in two of them."""
    tables, metas, owner = [], [], {}
    for path in paths:
        if want is not None:
            present = set(_schema_names(path))
            absent = [c for c in want if c not in present]
            if absent:
                raise ValueError(f"sidecar {path} has no column(s) {', '.join(absent)}")
        table, meta = read_sidecar(path, columns=want)
        # by key or uid, a shard column holds embedding partitions, which
        # other sidecars may share; a key in two of them is caught at lookup
        by_shard = meta.get("join", "shard_key") == "shard_key"
        for name in pc.unique(table.column("shard")).to_pylist() if by_shard else []:
            if name in owner:
                raise ValueError(
                    f"shard {name} has rows in both {owner[name]} and {path}; give each shard's sidecar once"
                )
            owner[name] = str(path)
        tables.append(table)
        metas.append(meta)
    return tables, metas


def evaluate(data, expr: str, fill_null: bool = True):
    """Evaluate ``expr`` on every row of a table, without loading anything.

    Parameters
    ----------
    data : a :class:`Verdicts`, a ``pyarrow.Table`` or a ``pandas.DataFrame``
        (e.g. sidecar rows already joined to a dataset); only the columns the
        expression names are needed. NaN in a pandas float column is a null.
    expr, fill_null : as :meth:`Verdicts.evaluate` (no status rule applied).

    Returns
    -------
    numpy.ndarray (bool or float64), or a ``pyarrow.Array`` with ``fill_null=False``.
    """
    if isinstance(data, Verdicts):
        return data.evaluate(expr, fill_null)
    if not isinstance(data, pa.Table):
        try:
            data = pa.Table.from_pandas(data, preserve_index=False)
        except (TypeError, AttributeError, pa.ArrowException) as exc:
            raise TypeError(
                f"evaluate() needs a Verdicts, a pyarrow.Table or a pandas.DataFrame ({exc})"
            ) from None
    return evaluate_table(data, expr, fill_null)

"""Per-sample verdicts for trainers that do not know nclean.

A trainer needs one of three things from a sidecar: a *weight* per sample, a
*keep/drop* decision per sample, or a *sampler* that draws samples in
proportion to their weights. This module gives all three without the trainer
having to read Parquet or know the schema:

* :class:`Verdicts` loads one or many sidecars (files or part folders, each
  validated), finds the row of a sample by (``shard``, ``key``) or by ``uid``
  (vectorised), and evaluates small expressions over the columns, such as
  ``sdd_keep and osa_weight > 0`` or ``osa_weight_norm * sdd_w_con``.
* :func:`attach_weights` and :func:`keep_where` are webdataset pipeline
  stages (callables from an iterator of sample dicts to an iterator of sample
  dicts), for ``wds.WebDataset(urls).compose(stage)``.
* :class:`WeightedSampler` and :func:`keep_indices` serve map-style datasets.

Joining is never silent: a sample with no row in the sidecar raises
:class:`SidecarMismatchError` with counts, unless the caller opts out with
``on_missing="drop"`` or ``"zero"``.

Expressions
-----------
Parsed with :mod:`ast` and evaluated column-wise with pyarrow; only these are
allowed: column names, numbers, strings, ``True``/``False``, comparisons
(``== != < <= > >=``, chains like ``0 < x <= 1``), ``and``/``or``/``not``,
``+ - * / **``, unary ``-``/``+`` and parentheses. Anything else (calls,
attributes, indexing, unknown names, ...) raises :class:`ValueError`.
Booleans count as 1/0 in arithmetic; ``and``/``or``/``not`` need true/false
operands (write ``osa_weight > 0``, not ``osa_weight``).

Nulls (rows that could not be scored carry nulls in most method columns)
follow SQL's three-valued logic: a comparison with a null is *unknown*,
arithmetic with a null gives null, ``unknown and False`` is False and
``unknown or True`` is True, and ``not unknown`` stays unknown. Whatever is
still unknown or null at the end counts as **not kept** / **weight 0** (and
NaN, e.g. from ``0/0``, counts as null). So a comparison with a null is never
true, not even under ``not``.

Failed rows
-----------
Rows whose ``status`` is not ``ok`` (decode errors, duplicate keys, ...) are
not kept and weigh 0 in :meth:`Verdicts.mask`, :meth:`Verdicts.weights` and
everything built on them, whatever the expression says, because the trainer
could not use those samples anyway; ``keep_failed=True`` lets the expression
decide.

Ambiguous rows
--------------
A key that occurs twice in a shard gives two sidecar rows with the same
(``shard``, ``key``); the repeat has status ``duplicate_key``. The two samples
cannot be told apart by key, so a lookup returns the *last* such row (the
flagged one), and both samples get its verdict: not kept, weight 0. The same
rule applies to repeated uids.

Examples
--------
>>> import webdataset as wds
>>> from cleaner.train.weights import Verdicts, attach_weights, keep_where
>>> v = Verdicts.load("weights.parquet")                       # doctest: +SKIP
>>> ds = (wds.WebDataset(urls, shardshuffle=False)             # doctest: +SKIP
...       .compose(keep_where(v, "sdd_keep"), attach_weights(v, "osa_weight_norm"))
...       .decode("pil"))
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleaner.errors import NcleanError
from cleaner.io.sidecar import read_sidecar

__all__ = [
    "SidecarMismatchError",
    "Verdicts",
    "WeightedSampler",
    "attach_weights",
    "evaluate",
    "keep_indices",
    "keep_where",
    "shard_name",
]

ON_MISSING = ("error", "drop", "zero")
OPT_OUT_HINT = "on_missing='drop' or 'zero' opts out"  # the CLI swaps in its own flag
_SHOWN = 5  # how many shard names an error message lists


class SidecarMismatchError(NcleanError, LookupError):
    """Samples have no row in the sidecar (wrong sidecar, or other shards)."""


# --------------------------------------------------------------------------
# Shard names
# --------------------------------------------------------------------------

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


# --------------------------------------------------------------------------
# Expressions
# --------------------------------------------------------------------------

_COMPARE = {
    ast.Eq: pc.equal,
    ast.NotEq: pc.not_equal,
    ast.Lt: pc.less,
    ast.LtE: pc.less_equal,
    ast.Gt: pc.greater,
    ast.GtE: pc.greater_equal,
}
_ARITH = {
    ast.Add: pc.add,
    ast.Sub: pc.subtract,
    ast.Mult: pc.multiply,
    ast.Div: pc.divide,
    ast.Pow: pc.power,
}
_OP_TEXT = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/", ast.Pow: "**"}
_REFUSED = {
    ast.Call: "function calls",
    ast.Attribute: "attribute access",
    ast.Subscript: "indexing",
    ast.Lambda: "lambda",
    ast.IfExp: "'x if c else y'",
    ast.In: "'in' (use == ... or == ...)",
    ast.NotIn: "'not in'",
    ast.Is: "'is'",
    ast.IsNot: "'is not'",
    ast.FloorDiv: "'//'",
    ast.Mod: "'%'",
    ast.BitAnd: "'&' (use 'and')",
    ast.BitOr: "'|' (use 'or')",
    ast.BitXor: "'^'",
    ast.Invert: "'~' (use 'not')",
    ast.LShift: "'<<'",
    ast.RShift: "'>>'",
    ast.MatMult: "'@'",
}
_MAX_EXPR = 10_000  # characters; a guard against pathological nesting


class _Value:
    """An intermediate result: an arrow array or scalar, and its kind."""

    __slots__ = ("data", "kind")

    def __init__(self, data, kind: str):
        self.data = data  # pa.Array | pa.ChunkedArray | pa.Scalar
        self.kind = kind  # "bool" | "num" | "str"


def _kind_of(typ: pa.DataType) -> str | None:
    if pa.types.is_boolean(typ):
        return "bool"
    if pa.types.is_integer(typ) or pa.types.is_floating(typ):
        return "num"
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return "str"
    return None


class _Evaluator:
    """Walk a parsed expression, computing it column-wise over ``table``."""

    def __init__(self, table: pa.Table, text: str):
        self.table = table
        self.text = text

    def fail(self, message: str) -> ValueError:
        return ValueError(f"expression {self.text!r}: {message}")

    def visit(self, node: ast.AST) -> _Value:
        if isinstance(node, ast.Expression):
            return self.visit(node.body)
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.Constant):
            return self.constant(node.value)
        if isinstance(node, ast.BoolOp):
            return self.boolop(node)
        if isinstance(node, ast.UnaryOp):
            return self.unary(node)
        if isinstance(node, ast.BinOp):
            return self.binop(node)
        if isinstance(node, ast.Compare):
            return self.compare(node)
        raise self.fail(f"{_REFUSED.get(type(node), type(node).__name__)} not allowed")

    def name(self, name: str) -> _Value:
        if name not in self.table.column_names:
            known = ", ".join(self.table.column_names)
            raise self.fail(f"unknown column {name!r} (columns: {known})")
        column = self.table.column(name)
        kind = _kind_of(column.type)
        if kind is None:
            raise self.fail(f"column {name!r} has type {column.type}, which expressions cannot use")
        return _Value(column, kind)

    def constant(self, value) -> _Value:
        # bool before int: True is an int in Python
        if isinstance(value, bool):
            return _Value(pa.scalar(value), "bool")
        if isinstance(value, (int, float)):
            return _Value(pa.scalar(float(value)), "num")
        if isinstance(value, str):
            return _Value(pa.scalar(value), "str")
        if value is None:
            raise self.fail("None not allowed (comparisons with a null are never true)")
        raise self.fail(f"constant {value!r} not allowed")

    def boolean(self, node: ast.AST, op: str) -> pa.Array:
        value = self.visit(node)
        if value.kind != "bool":
            shown = ast.unparse(node)
            raise self.fail(
                f"'{op}' needs true/false operands, {shown!r} is {_KIND_TEXT[value.kind]} (compare it, e.g. {shown} > 0)"
            )
        return value.data

    def boolop(self, node: ast.BoolOp) -> _Value:
        op = "and" if isinstance(node.op, ast.And) else "or"
        combine = pc.and_kleene if op == "and" else pc.or_kleene
        result = self.boolean(node.values[0], op)
        for operand in node.values[1:]:
            result = combine(result, self.boolean(operand, op))
        return _Value(result, "bool")

    def number(self, value: _Value, node: ast.AST, what: str) -> pa.Array:
        if value.kind == "str":
            raise self.fail(f"{what} needs numbers, {ast.unparse(node)!r} is text")
        # float64 throughout: '/' is true division and booleans count as 1/0
        return pc.cast(value.data, pa.float64())

    def unary(self, node: ast.UnaryOp) -> _Value:
        if isinstance(node.op, ast.Not):
            return _Value(pc.invert(self.boolean(node.operand, "not")), "bool")
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            data = self.number(self.visit(node.operand), node.operand, "unary minus/plus")
            return _Value(pc.negate(data) if isinstance(node.op, ast.USub) else data, "num")
        raise self.fail(f"{_REFUSED.get(type(node.op), type(node.op).__name__)} not allowed")

    def binop(self, node: ast.BinOp) -> _Value:
        func = _ARITH.get(type(node.op))
        if func is None:
            raise self.fail(f"{_REFUSED.get(type(node.op), type(node.op).__name__)} not allowed")
        what = f"'{_OP_TEXT[type(node.op)]}'"
        left = self.number(self.visit(node.left), node.left, what)
        right = self.number(self.visit(node.right), node.right, what)
        return _Value(func(left, right), "num")

    def compare(self, node: ast.Compare) -> _Value:
        result = None
        left_node, left = node.left, self.visit(node.left)
        for op, right_node in zip(node.ops, node.comparators, strict=True):
            func = _COMPARE.get(type(op))
            if func is None:
                raise self.fail(f"{_REFUSED.get(type(op), type(op).__name__)} not allowed")
            right = self.visit(right_node)
            a, b = self.comparable(left, left_node, right, right_node)
            part = func(a, b)
            result = part if result is None else pc.and_kleene(result, part)
            left_node, left = right_node, right
        return _Value(result, "bool")

    def comparable(self, left: _Value, left_node, right: _Value, right_node):
        kinds = {left.kind, right.kind}
        if len(kinds) == 1:
            return left.data, right.data
        if "str" in kinds:
            raise self.fail(
                f"cannot compare {ast.unparse(left_node)!r} ({_KIND_TEXT[left.kind]}) "
                f"with {ast.unparse(right_node)!r} ({_KIND_TEXT[right.kind]})"
            )
        # bool vs number: True == 1, as in Python
        return pc.cast(left.data, pa.float64()), pc.cast(right.data, pa.float64())


_KIND_TEXT = {"bool": "true/false", "num": "a number", "str": "text"}


def _parse(text: str) -> ast.Expression:
    if not isinstance(text, str) or not text.strip():
        raise ValueError("empty expression")
    if len(text) > _MAX_EXPR:
        raise ValueError(f"expression longer than {_MAX_EXPR} characters")
    try:
        return ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"expression {text!r} is not valid: {exc.msg}") from None


def _broadcast(data, n: int) -> pa.Array:
    """A scalar (from a constant expression) repeated ``n`` times; arrays as one chunk."""
    if isinstance(data, pa.Scalar):
        return pa.array([data.as_py()] * n, type=data.type) if n else pa.array([], type=data.type)
    if isinstance(data, pa.ChunkedArray):
        return data.combine_chunks() if data.num_chunks != 1 else data.chunk(0)
    return data


def _as_str_array(values, what: str) -> pa.Array:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        arr = values
    else:
        if isinstance(values, (str, bytes)):
            raise TypeError(f"{what} must be a sequence of strings, not a single string")
        arr = pa.array(list(values), type=pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    return arr.cast(pa.string())


def _evaluate_table(table: pa.Table, expr: str, fill_null: bool):
    value = _Evaluator(table, expr).visit(_parse(expr))
    if value.kind == "str":
        raise ValueError(f"expression {expr!r} gives text; compare it, e.g. {expr} == 'reliable'")
    data = _broadcast(value.data, table.num_rows)
    if not fill_null:
        return data
    if value.kind == "bool":
        return pc.fill_null(data, False).to_numpy(zero_copy_only=False).astype(bool)
    out = pc.fill_null(pc.cast(data, pa.float64()), 0.0).to_numpy(zero_copy_only=False)
    return np.where(np.isnan(out), 0.0, out)


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
    return _evaluate_table(data, expr, fill_null)


# --------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------


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
        missing = [
            c for c in ("key", "shard", "index", "uid", "status") if c not in table.column_names
        ]
        if missing:
            raise ValueError(f"verdict table lacks column(s) {', '.join(missing)}")
        self.table = table
        self.metadata = list(metadata or [])
        self.sources = list(sources or [])
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
        base = ["key", "shard", "index", "uid", "status"]
        want = None if columns is None else list(dict.fromkeys([*base, *columns]))
        tables, metas, owner = [], [], {}
        for path in paths:
            if want is not None:
                present = set(_schema_names(path))
                absent = [c for c in want if c not in present]
                if absent:
                    raise ValueError(f"sidecar {path} has no column(s) {', '.join(absent)}")
            table, meta = read_sidecar(path, columns=want)
            for name in pc.unique(table.column("shard")).to_pylist():
                if name in owner:
                    raise ValueError(
                        f"shard {name} has rows in both {owner[name]} and {path}; give each shard's sidecar once"
                    )
                owner[name] = str(path)
            tables.append(table)
            metas.append(meta)
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
        expr : an expression over the columns (see the module docstring for
            the grammar and null rules), e.g. ``sdd_keep and osa_weight > 0``.
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
        return _evaluate_table(self.table, expr, fill_null)

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

    def lookup(self, shards, keys, on_missing: str = "error") -> np.ndarray:
        """Row of each (shard, key) pair.

        Parameters
        ----------
        shards : shard file names (``00042.tar``) or paths/URLs (their file
            name is used, see :func:`shard_name`), one per sample.
        keys : webdataset keys (``__key__``), one per sample.
        on_missing : ``"error"`` raises :class:`SidecarMismatchError` naming
            how many samples have no row and in which shards; ``"drop"`` or
            ``"zero"`` return -1 for them.

        Returns
        -------
        numpy.ndarray of int64, one row number per pair (-1: no row).
        """
        _check_on_missing(on_missing)
        shard_arr = _normalise_shards(_as_str_array(shards, "shards"))
        key_arr = _as_str_array(keys, "keys")
        if len(shard_arr) != len(key_arr):
            raise ValueError(f"{len(shard_arr)} shards for {len(key_arr)} keys")
        if self._pairs_rev is None:
            pairs = pc.binary_join_element_wise(
                self.table.column("shard"), self.table.column("key"), "\x00"
            )
            self._pairs_rev = _reversed(pairs)
        query = pc.binary_join_element_wise(shard_arr, key_arr, "\x00")
        rows = _find_last(query, self._pairs_rev)
        if on_missing == "error" and (rows < 0).any():
            raise SidecarMismatchError(self._mismatch_message(rows < 0, shard_arr, "samples"))
        return rows

    def lookup_uids(self, uids, on_missing: str = "error") -> np.ndarray:
        """Row of each uid (null uids in the sidecar never match); see :meth:`lookup`."""
        _check_on_missing(on_missing)
        uid_arr = _as_str_array(uids, "uids")
        if self._uids_rev is None:
            self._uids_rev = _reversed(self.table.column("uid"))
        rows = _find_last(uid_arr, self._uids_rev)
        if on_missing == "error" and (rows < 0).any():
            missing = rows < 0
            shown = ", ".join(
                repr(u) for u in uid_arr.filter(pa.array(missing)).to_pylist()[:_SHOWN]
            )
            raise SidecarMismatchError(
                f"{int(missing.sum())} of {len(rows)} uids have no row in the sidecar (e.g. {shown}); "
                f"was it scored with --uid-field? {OPT_OUT_HINT}"
            )
        return rows

    def lookup_keys(self, keys, on_missing: str = "error") -> np.ndarray:
        """Row of each key alone, for datasets whose keys are unique across shards.

        Raises :class:`ValueError` if a key has rows in more than one shard
        (pass (shard, key) pairs to :meth:`lookup` instead).
        """
        _check_on_missing(on_missing)
        key_arr = _as_str_array(keys, "keys")
        if self._keys_rev is None:
            self._keys_rev = _reversed(self.table.column("key"))
        rows = _find_last(key_arr, self._keys_rev)
        found = rows >= 0
        if found.any():
            # a key whose first and last rows lie in different shards is ambiguous
            first = _find_first(key_arr, self.table.column("key").combine_chunks())
            shard_col = self.table.column("shard")
            a = shard_col.take(pa.array(first[found])).to_numpy(zero_copy_only=False)
            b = shard_col.take(pa.array(rows[found])).to_numpy(zero_copy_only=False)
            clash = a != b
            if clash.any():
                example = key_arr.filter(pa.array(found)).to_pylist()[int(np.flatnonzero(clash)[0])]
                raise ValueError(
                    f"{int(clash.sum())} keys have rows in more than one shard (e.g. {example!r}); "
                    "look them up by (shard, key) pairs"
                )
        if on_missing == "error" and not found.all():
            missing = ~found
            shown = ", ".join(
                repr(k) for k in key_arr.filter(pa.array(missing)).to_pylist()[:_SHOWN]
            )
            raise SidecarMismatchError(
                f"{int(missing.sum())} of {len(rows)} keys have no row in the sidecar (e.g. {shown}); "
                + OPT_OUT_HINT
            )
        return rows

    def _mismatch_message(self, missing: np.ndarray, shard_arr: pa.Array, what: str) -> str:
        names = shard_arr.filter(pa.array(missing)).to_numpy(zero_copy_only=False)
        uniq, counts = np.unique(names, return_counts=True)
        order = np.argsort(-counts, kind="stable")
        known = set(self._shard_groups()[0])
        parts = []
        for i in order[:_SHOWN]:
            note = "" if uniq[i] in known else ", shard not in the sidecar"
            parts.append(f"{uniq[i]} ({counts[i]}{note})")
        more = f" and {len(uniq) - _SHOWN} more" if len(uniq) > _SHOWN else ""
        return (
            f"{int(missing.sum())} of {len(missing)} {what} have no row in the sidecar "
            f"(shards: {', '.join(parts)}{more}); is it the sidecar of these shards? "
            + OPT_OUT_HINT
        )

    # -- per-shard index for streaming --------------------------------------

    def _shard_groups(self) -> tuple[dict[str, int], np.ndarray, np.ndarray]:
        """(shard name -> code, row order grouped by shard, group offsets)."""
        if self._by_shard is None:
            encoded = self.table.column("shard").combine_chunks().dictionary_encode()
            codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
            names = encoded.dictionary.to_pylist()
            order = np.argsort(codes, kind="stable")
            offsets = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
            self._by_shard = ({n: i for i, n in enumerate(names)}, order, offsets)
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
        if the sidecar has no rows for it. A few shards are cached."""
        cached = self._shard_cache.get(shard)
        if cached is not None:
            return cached
        rows = self.rows_of_shard(shard)
        if len(rows) == 0:
            return None
        keys = self.table.column("key").take(pa.array(rows)).to_pylist()
        index = dict(
            zip(keys, rows.tolist(), strict=True)
        )  # later rows overwrite: the "last row" rule
        if len(self._shard_cache) >= 8:  # workers read a few shards at a time
            self._shard_cache.pop(next(iter(self._shard_cache)))
        self._shard_cache[shard] = index
        return index

    def __getstate__(self):
        # caches are rebuilt on demand (DataLoader workers pickle the stages)
        state = self.__dict__.copy()
        state.update(
            _pairs_rev=None, _uids_rev=None, _keys_rev=None, _by_shard=None, _shard_cache={}
        )
        return state


def _schema_names(path: Path) -> list[str]:
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return pq.read_schema(files[0]).names if files else []


def _check_on_missing(on_missing: str) -> None:
    if on_missing not in ON_MISSING:
        raise ValueError(f"on_missing must be one of {', '.join(ON_MISSING)}, not {on_missing!r}")


def _normalise_shards(arr: pa.Array) -> pa.Array:
    encoded = arr.dictionary_encode()
    names = encoded.dictionary.to_pylist()
    fixed = [
        n if n is None or ("/" not in n and "?" not in n and ":" not in n) else shard_name(n)
        for n in names
    ]
    if fixed == names:
        return arr
    return pa.array(fixed, type=pa.string()).take(encoded.indices)


def _reversed(column) -> pa.Array:
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return arr.take(pa.array(np.arange(len(arr) - 1, -1, -1, dtype=np.int64)))


def _find_first(query: pa.Array, value_set: pa.Array) -> np.ndarray:
    """First row of ``value_set`` equal to each query value; -1 if none (nulls never match)."""
    if len(value_set) == 0 or len(query) == 0:
        return np.full(len(query), -1, dtype=np.int64)
    pos = pc.index_in(query, value_set=value_set, skip_nulls=True)
    return pc.fill_null(pos, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _find_last(query: pa.Array, value_set_rev: pa.Array) -> np.ndarray:
    """Last row of the (un-reversed) value set equal to each query value; -1 if none.

    ``index_in`` finds the first match, so it runs on the reversed values.
    Nulls never match (a null uid is not an id).
    """
    pos = _find_first(query, value_set_rev)
    return np.where(pos >= 0, len(value_set_rev) - 1 - pos, -1)


# --------------------------------------------------------------------------
# webdataset stages
# --------------------------------------------------------------------------


class _Stage:
    """Shared join logic: find each streamed sample's row via ``__url__``/``__key__``."""

    def __init__(self, verdicts: Verdicts, on_missing: str, shard_of=None):
        _check_on_missing(on_missing)
        if not isinstance(verdicts, Verdicts):
            raise TypeError("pass a cleaner.train.weights.Verdicts (Verdicts.load(path))")
        self.verdicts = verdicts
        self.on_missing = on_missing
        self.shard_of = shard_of or shard_name

    def rows(self, src: Iterable[dict]) -> Iterator[tuple[dict, int]]:
        """Yield (sample, row) with row -1 for a missing sample under an opt-out."""
        current, index, seen, matched = None, None, 0, 0
        for sample in src:
            url, key = sample.get("__url__"), sample.get("__key__")
            if url is None or key is None:
                raise ValueError(
                    "sample lacks __url__ or __key__: put the nclean stage before stages that drop them "
                    "(webdataset sets both when it reads tars)"
                )
            name = self.shard_of(url)
            if name != current:
                current, index, seen, matched = name, self.verdicts.shard_index(name), 0, 0
            seen += 1
            row = index.get(key) if index is not None else None
            if row is None:
                if self.on_missing == "error":
                    raise SidecarMismatchError(self._message(name, key, index, seen, matched))
                row = -1
            else:
                matched += 1
            yield sample, row

    def _message(self, name, key, index, seen, matched) -> str:
        if index is None:
            known = self.verdicts.shards
            shown = ", ".join(known[:_SHOWN]) + (
                f" and {len(known) - _SHOWN} more" if len(known) > _SHOWN else ""
            )
            return (
                f"shard {name} has no rows in the sidecar (sample {key!r}); the sidecar covers "
                f"{len(known)} shards: {shown}. {OPT_OUT_HINT}"
            )
        return (
            f"sample {key!r} of shard {name} has no row in the sidecar ({matched} of {seen} samples of this "
            f"shard matched so far; the sidecar has {len(index)} keys for it). {OPT_OUT_HINT}"
        )


class attach_weights(_Stage):  # noqa: N801 - used like a function, as webdataset's stages are
    """webdataset stage: add ``sample[key] = weight`` from a column or expression.

    Parameters
    ----------
    verdicts : Verdicts
    expr_or_column : a column name (``osa_weight_norm``) or expression
        (``osa_weight_norm * sdd_w_con``, ``sdd_keep`` as 1/0).
    on_missing : ``"error"`` (default) raises :class:`SidecarMismatchError`
        for a sample with no row; ``"zero"`` gives it weight 0.0;
        ``"drop"`` leaves it out of the stream.
    key : the sample field to set (default ``"weight"``).
    keep_failed : give rows whose status is not ``ok`` their expression's
        value instead of 0.
    shard_of : function from ``__url__`` to the sidecar's shard name
        (default :func:`shard_name`, the URL's file name).

    Examples
    --------
    >>> ds = wds.WebDataset(urls).compose(attach_weights(v, "osa_weight_norm"))  # doctest: +SKIP
    >>> next(iter(ds))["weight"]                                                  # doctest: +SKIP
    0.93
    """

    def __init__(
        self,
        verdicts: Verdicts,
        expr_or_column: str,
        on_missing: str = "error",
        key: str = "weight",
        keep_failed: bool = False,
        shard_of=None,
    ):
        super().__init__(verdicts, on_missing, shard_of)
        self.expr = expr_or_column
        self.key = key
        # computed once, vectorised, over all rows; per sample it is one lookup
        self.values = verdicts.weights(expr_or_column, keep_failed=keep_failed)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample, row in self.rows(src):
            if row < 0:
                if self.on_missing == "drop":
                    continue
                weight = 0.0
            else:
                weight = float(self.values[row])
            sample[self.key] = weight
            yield sample


class keep_where(_Stage):  # noqa: N801 - used like a function, as webdataset's stages are
    """webdataset stage: yield only the samples for which ``expr`` is true.

    Parameters
    ----------
    verdicts : Verdicts
    expr : a true/false expression, e.g. ``sdd_keep and osa_weight > 0`` or
        ``sps_partition == 'reliable'``. Unknown (null) counts as false.
    on_missing : ``"error"`` (default) raises :class:`SidecarMismatchError`;
        ``"drop"`` and ``"zero"`` both leave samples without a row out.
    keep_failed : let the expression decide for rows whose status is not
        ``ok`` (by default they are dropped).
    shard_of : see :class:`attach_weights`.
    """

    def __init__(
        self,
        verdicts: Verdicts,
        expr: str,
        on_missing: str = "error",
        keep_failed: bool = False,
        shard_of=None,
    ):
        super().__init__(verdicts, on_missing, shard_of)
        self.expr = expr
        self.keep = verdicts.mask(expr, keep_failed=keep_failed)

    def __call__(self, src: Iterable[dict]) -> Iterator[dict]:
        for sample, row in self.rows(src):
            if row >= 0 and self.keep[row]:
                yield sample


# --------------------------------------------------------------------------
# Map-style datasets
# --------------------------------------------------------------------------


def _rows_for(verdicts: Verdicts, keys, uids, on_missing: str) -> np.ndarray:
    """Rows for dataset items given by uid, by key, or by (shard, key) pairs."""
    if (keys is None) == (uids is None):
        raise ValueError("give exactly one of keys= (keys or (shard, key) pairs) or uids=")
    if uids is not None:
        return verdicts.lookup_uids(uids, on_missing)
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        return verdicts.lookup_keys(keys, on_missing)
    items = list(keys)
    if items and not isinstance(items[0], str):
        try:
            shards, names = zip(*items, strict=True)
        except (TypeError, ValueError):
            raise ValueError("keys must be strings or (shard, key) pairs") from None
        return verdicts.lookup(list(shards), list(names), on_missing)
    return verdicts.lookup_keys(items, on_missing)


def keep_indices(
    verdicts: Verdicts,
    expr: str | None,
    *,
    keys=None,
    uids=None,
    on_missing: str = "error",
    keep_failed: bool = False,
) -> np.ndarray:
    """Dataset indices to keep, for ``torch.utils.data.Subset(dataset, indices)``.

    Parameters
    ----------
    verdicts : Verdicts
    expr : a true/false expression (``None`` keeps every ok row).
    keys : per dataset index, the sample's key (keys unique across shards)
        or its (shard, key) pair.
    uids : per dataset index, the sample's uid (instead of keys).
    on_missing : ``"error"`` raises :class:`SidecarMismatchError`;
        ``"drop"``/``"zero"`` leave items without a row out.
    keep_failed : see :meth:`Verdicts.mask`.

    Returns
    -------
    numpy.ndarray of int64, sorted.
    """
    rows = _rows_for(verdicts, keys, uids, on_missing)
    mask = verdicts.mask(expr, keep_failed=keep_failed)
    found = rows >= 0
    keep = np.zeros(len(rows), dtype=bool)
    keep[found] = mask[rows[found]]
    return np.flatnonzero(keep).astype(np.int64)


try:  # torch is a dependency of nclean, but the weights API should import without it
    from torch.utils.data import Sampler as _SamplerBase
except ImportError:  # pragma: no cover
    _SamplerBase = object


class WeightedSampler(_SamplerBase):
    """Sample dataset indices with replacement, in proportion to a weight.

    For map-style datasets: pass, per dataset index, the sample's key (when
    keys are unique across shards), its (shard, key) pair, or its uid.

    Parameters
    ----------
    verdicts : Verdicts
    weights : a column or expression giving a non-negative number (or
        true/false, as 1/0) per sample, e.g. ``osa_weight_norm``.
    keys, uids : see :func:`keep_indices`; give exactly one.
    num_samples : indices per epoch [default: the dataset's length].
    replacement : draw with replacement (default). Without replacement,
        ``num_samples`` may not exceed the number of positive weights.
    seed : the draws of epoch ``e`` come from ``numpy.random.default_rng([seed, e])``,
        so a run is reproducible and each epoch differs. The epoch advances by
        one after each full iteration, or is set with :meth:`set_epoch`.
    on_missing : ``"error"`` raises :class:`SidecarMismatchError`;
        ``"zero"``/``"drop"`` give items without a row weight 0 (never drawn).
    keep_failed : see :meth:`Verdicts.weights`.

    Raises
    ------
    ValueError
        if a weight is negative or not finite, or all weights are zero.
    """

    def __init__(
        self,
        verdicts: Verdicts,
        weights: str,
        *,
        keys=None,
        uids=None,
        num_samples: int | None = None,
        replacement: bool = True,
        seed: int = 0,
        on_missing: str = "error",
        keep_failed: bool = False,
    ):
        super().__init__()
        rows = _rows_for(verdicts, keys, uids, on_missing)
        per_row = verdicts.weights(weights, keep_failed=keep_failed)
        w = np.zeros(len(rows), dtype=np.float64)
        found = rows >= 0
        w[found] = per_row[rows[found]]
        if not np.all(np.isfinite(w)) or (w < 0).any():
            bad = int((~np.isfinite(w) | (w < 0)).sum())
            raise ValueError(f"weights {weights!r}: {bad} values are negative or not finite")
        positive = int((w > 0).sum())
        if positive == 0:
            raise ValueError(f"weights {weights!r}: every sample weighs 0")
        self.weights = w
        self.num_samples = len(w) if num_samples is None else int(num_samples)
        if self.num_samples < 0:
            raise ValueError("num_samples must be >= 0")
        if not replacement and self.num_samples > positive:
            raise ValueError(
                f"cannot draw {self.num_samples} without replacement from {positive} positive weights"
            )
        self.replacement = replacement
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        p = self.weights / self.weights.sum()
        drawn = rng.choice(len(p), size=self.num_samples, replace=self.replacement, p=p)
        self.epoch += 1
        yield from drawn.tolist()

"""The safe ``--where`` / weight expression language, evaluated column-wise.

An expression such as ``sdd_keep and osa_weight > 0`` is parsed with
:mod:`ast` and walked node by node, each node computed over whole pyarrow
columns; only the grammar the :mod:`cleaner.train.weights` docstring lists is
accepted, everything else is a :class:`ValueError` naming what was refused.
Nulls follow SQL's three-valued logic (Kleene ``and``/``or``).

A module of its own because it knows nothing about sidecars, samples or
joins: it needs only a table, so :class:`~cleaner.train.verdicts.Verdicts`,
the public :func:`~cleaner.train.weights.evaluate` and the trainer's
``--where`` share it.
"""

from __future__ import annotations

import ast

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def evaluate_table(table: pa.Table, expr: str, fill_null: bool):
    """``expr`` over every row of ``table``: numpy (nulls resolved to False /
    0.0) with ``fill_null``, else the pyarrow array with its nulls."""
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

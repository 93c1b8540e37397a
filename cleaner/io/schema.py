"""The sidecar schema: the one place that says which columns exist.

A sidecar is Parquet, one row per input sample, joinable to the data by
(``shard``, ``key``) or by ``uid``. File-level metadata sits under the
Parquet key-value key ``nclean`` as JSON (version, model, beta, fitted
parameters, the command's arguments, schema version). Readers call
:func:`validate` and refuse files of an unknown schema version.
"""

from __future__ import annotations

import json

import pyarrow as pa

SCHEMA_VERSION = 1
METADATA_KEY = b"nclean"

BASE_FIELDS = [
    pa.field("key", pa.string(), nullable=False),
    pa.field("shard", pa.string(), nullable=False),
    pa.field("index", pa.int64(), nullable=False),
    pa.field("uid", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # ok | a reason (cleaner.io.decode.STATUSES)
    pa.field("error", pa.string()),
]

def _catalog():
    # the registry owns the methods' columns; imported late so that reading
    # a sidecar's base columns needs no method code
    from cleaner.methods import catalog

    return catalog


def method_fields(name: str) -> list[pa.Field]:
    return list(_catalog().get(name).fields)


def fill_for_failed() -> dict:
    """Value each non-nullable method column takes on rows that could not be scored."""
    return {k: v for m in _catalog().REGISTRY.values() for k, v in m.fill_for_failed.items()}


def __getattr__(name: str):
    # names older code and tests read as constants, derived from the registry
    cat = _catalog()
    if name == "METHOD_FIELDS":
        return {n: list(m.fields) for n, m in cat.REGISTRY.items()}
    if name == "FILL_FOR_FAILED":
        return fill_for_failed()
    if name == "ALL_METHODS":
        return cat.all_names()
    if name == "DEFAULT_METHODS":
        return cat.default_names()
    raise AttributeError(name)


def parse_methods(text: str | list[str]) -> list[str]:
    return _catalog().parse_methods(text)


def schema_for(methods: list[str], metadata: dict | None = None) -> pa.Schema:
    fields = list(BASE_FIELDS)
    for m in methods:
        fields.extend(method_fields(m))
    schema = pa.schema(fields)
    if metadata is not None:
        schema = schema.with_metadata(
            {METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str).encode()}
        )
    return schema


class SchemaError(ValueError):
    pass


def read_metadata(schema: pa.Schema) -> dict:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise SchemaError("not an nclean sidecar: no 'nclean' metadata")
    return json.loads(raw)


def validate(schema: pa.Schema) -> dict:
    """Check a sidecar's schema; return its nclean metadata.

    Raises SchemaError for an unknown schema version, a missing base column,
    or a method column of the wrong type.
    """
    meta = read_metadata(schema)
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise SchemaError(
            f"sidecar schema version {version!r} is not supported (this nclean reads {SCHEMA_VERSION})"
        )
    # columns of methods this nclean does not know (a plug-in's) are not checked
    known = [m for m in meta.get("methods", []) if m in _catalog().REGISTRY]
    expected = schema_for(known)
    for f in expected:
        idx = schema.get_field_index(f.name)
        if idx < 0:
            raise SchemaError(f"sidecar lacks column {f.name!r}")
        if not schema.field(idx).type.equals(f.type):
            raise SchemaError(
                f"column {f.name!r} has type {schema.field(idx).type}, expected {f.type}"
            )
    return meta

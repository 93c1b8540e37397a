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

METHOD_FIELDS: dict[str, list[pa.Field]] = {
    "osa": [
        pa.field("cosine", pa.float32()),  # null when status != ok
        pa.field("osa_weight", pa.float32(), nullable=False),  # 0 when status != ok
        pa.field("osa_weight_norm", pa.float32(), nullable=False),
    ],
    "sdd": [
        pa.field("sdd_keep", pa.bool_(), nullable=False),  # False when status != ok
        pa.field("sdd_w_con", pa.float32()),
        pa.field("sdd_clean", pa.bool_()),
        pa.field("sdd_mb_image_key", pa.string()),
        pa.field("sdd_mb_text_key", pa.string()),
    ],
    "sps": [
        pa.field("sps_loss", pa.float32()),
        pa.field("sps_clean_prob", pa.float32()),
        pa.field("sps_partition", pa.string()),  # reliable | quasi | noisy
        pa.field("sps_proxy_key", pa.string()),
        pa.field("sps_proxy_label", pa.float32()),
        pa.field("sps_soft_label", pa.float32()),
    ],
    "clipcleaner": [
        pa.field("label", pa.int64()),
        *[
            pa.field(f"cc_{name}_{est}", typ)
            for est in ("zs", "ind")
            for name, typ in (
                ("pred", pa.int64()),
                ("p_label", pa.float32()),
                ("consistency", pa.bool_()),
                ("gmm_clean_prob", pa.float32()),
            )
        ],
        pa.field("cc_selected", pa.bool_(), nullable=False),
        pa.field("cc_label_quality", pa.float32()),
    ],
}

# Value a non-nullable column takes on rows that could not be scored.
FILL_FOR_FAILED = {
    "osa_weight": 0.0,
    "osa_weight_norm": 0.0,
    "sdd_keep": False,
    "cc_selected": False,
}

ALL_METHODS = tuple(METHOD_FIELDS)
DEFAULT_METHODS = ("osa", "sdd", "sps")


def parse_methods(text: str | list[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    methods = [m.strip().lower() for m in items if m.strip()]
    unknown = [m for m in methods if m not in METHOD_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}"
        )
    if not methods:
        raise ValueError("no method given")
    # canonical order, so the schema does not depend on how the list was typed
    return [m for m in ALL_METHODS if m in methods]


def schema_for(methods: list[str], metadata: dict | None = None) -> pa.Schema:
    fields = list(BASE_FIELDS)
    for m in methods:
        fields.extend(METHOD_FIELDS[m])
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
    expected = schema_for(meta.get("methods", []))
    for f in expected:
        idx = schema.get_field_index(f.name)
        if idx < 0:
            raise SchemaError(f"sidecar lacks column {f.name!r}")
        if not schema.field(idx).type.equals(f.type):
            raise SchemaError(
                f"column {f.name!r} has type {schema.field(idx).type}, expected {f.type}"
            )
    return meta

"""Writing, validating, merging and reading sidecar Parquet files.

Parts are written atomically (temp file in the same folder, fsync, rename),
so a killed job leaves either a whole valid part or none; a rerun treats a
part that exists and validates as done.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cleaner.io import schema as S
from cleaner.io.atomic import atomic_path


def build_part(
    meta: pa.Table,
    ok: np.ndarray,
    columns: dict[str, np.ndarray],
    methods: list[str],
    metadata: dict,
) -> pa.Table:
    """Assemble one shard's sidecar table.

    ``meta`` has the base columns for every row; ``columns`` holds each
    method column's values for the ``ok`` rows only (in row order). Rows
    that are not ok get nulls, or the fill value of a non-nullable column.
    """
    schema = S.schema_for(methods, metadata)
    ok = np.asarray(ok, dtype=bool)
    fills = S.fill_for_failed()
    arrays = []
    for field in schema:
        if field.name in meta.column_names and field.name in {f.name for f in S.BASE_FIELDS}:
            arrays.append(meta.column(field.name).cast(field.type))
            continue
        values = columns.get(field.name)
        if values is None:
            raise KeyError(f"scorer output lacks column {field.name}")
        if len(values) != ok.sum():
            raise ValueError(f"column {field.name}: {len(values)} values for {ok.sum()} ok rows")
        arrays.append(
            _full_column(field, np.asarray(values), ok, fills.get(field.name))
        )
    return pa.Table.from_arrays(arrays, schema=schema)


def _full_column(field: pa.Field, values: np.ndarray, ok: np.ndarray, fill) -> pa.Array:
    """Spread ok-row values over all rows: fill or null elsewhere; NaN -> null."""
    n = len(ok)
    if pa.types.is_string(field.type):
        full = np.full(n, None, dtype=object)
        full[ok] = values
        return pa.array(full.tolist(), type=field.type)
    dtype = field.type.to_pandas_dtype()
    if fill is not None:
        full = np.full(n, fill, dtype=dtype)
        full[ok] = values
        return pa.array(full, type=field.type)
    full = np.zeros(n, dtype=dtype)
    mask = ~ok
    if values.dtype == object:  # may hold None for "not applicable"
        none = np.array([v is None for v in values], dtype=bool)
        vals = np.where(none, 0, values).astype(dtype)
        full[ok] = vals
        mask[np.flatnonzero(ok)[none]] = True
    else:
        full[ok] = values
    if np.issubdtype(full.dtype, np.floating):
        mask |= np.isnan(full)
    return pa.array(full, type=field.type, mask=mask)


def atomic_write_table(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def part_is_valid(path: str | Path, expect: dict | None = None) -> bool:
    """True if ``path`` is a readable sidecar part whose metadata matches
    ``expect`` on every key given (e.g. the fit id)."""
    try:
        meta = S.validate(pq.read_schema(path))
        pq.read_metadata(path)  # footer readable => file complete
    except (OSError, S.SchemaError, pa.ArrowException, ValueError):
        return False
    return all(meta.get(k) == v for k, v in (expect or {}).items())


def merge_parts(parts: Iterable[str | Path], out: str | Path, metadata: dict) -> int:
    """Concatenate parts (in the order given) into one file, atomically.

    Streams one part at a time (row group per part), so memory holds one
    shard, not the dataset. Returns the number of rows.
    """
    parts = list(parts)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp")
    schema = None
    rows = 0
    writer = None
    try:
        for p in parts:
            table = pq.read_table(p)
            if schema is None:
                schema = table.schema.with_metadata(
                    {S.METADATA_KEY: json.dumps(metadata, sort_keys=True, default=str).encode()}
                )
                writer = pq.ParquetWriter(tmp, schema, compression="zstd")
            writer.write_table(table.replace_schema_metadata(schema.metadata))
            rows += len(table)
        if writer is None:  # no parts: write an empty file with the right schema
            pq.write_table(S.schema_for(metadata.get("methods", []), metadata).empty_table(), tmp)
        else:
            writer.close()
            writer = None
        os.replace(tmp, out)
    finally:
        if writer is not None:
            writer.close()
        if tmp.exists():
            tmp.unlink()
    return rows


def read_sidecar(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, dict]:
    """Read a sidecar file or a folder of parts; validate; return (table, metadata)."""
    path = Path(path)
    files = sorted(p for p in path.glob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise S.SchemaError(f"no sidecar parts in {path}")
    meta = S.validate(pq.read_schema(files[0]))
    tables = []
    for f in files:
        S.validate(pq.read_schema(f))
        tables.append(pq.read_table(f, columns=columns))
    return pa.concat_tables(tables), meta

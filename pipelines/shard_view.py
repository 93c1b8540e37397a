"""One cache partition as the methods see it: its rows' status and the
``ok`` rows as :class:`~cleaner.methods.base.Pairs`.

Every stage (fit, index, transform) reads shards through this view, so row
ids, keys and label checks are made the same way in each pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cleaner.errors import InputError
from cleaner.io.embcache import EmbeddingCache
from cleaner.methods.base import Pairs

ROW_ID_SHIFT = 32  # row id = shard position << 32 | index within shard


@dataclass
class ShardView:
    meta: pa.Table
    ok: np.ndarray
    pairs: Pairs

    @classmethod
    def load(
        cls, cache: EmbeddingCache, stem: str, position: int, n_classes: int | None = None
    ) -> ShardView:
        """``n_classes`` set: labels are needed; rows without a valid one
        become ``bad_label`` status rows (embeddings input can carry any)."""
        shard = cache.load(stem)
        meta = shard.meta
        labels = None
        if n_classes is not None:
            meta, labels = check_labels(meta, n_classes, stem)
        ok = np.asarray(meta.column("status").to_pylist(), dtype=object) == "ok"
        keys = np.asarray(meta.column("key").to_pylist(), dtype=object)
        index = meta.column("index").to_numpy()
        row_ids = (np.int64(position) << ROW_ID_SHIFT) | index.astype(np.int64)
        pairs = Pairs(
            image=shard.image[ok],
            text=shard.text[ok],
            keys=keys[ok],
            row_ids=row_ids[ok],
            labels=None if labels is None else labels[ok],
        )
        return cls(meta=meta, ok=ok, pairs=pairs)


def check_labels(meta: pa.Table, n_classes: int, stem: str) -> tuple[pa.Table, np.ndarray]:
    """Labels as int64 (-1 when missing); ok rows whose label is missing or
    out of range become ``bad_label`` rows with the reason in ``error``."""
    if "label" not in meta.column_names:
        raise InputError(
            f"partition {stem} has no label column: CLIPCleaner needs labelled data "
            "(shards with a cls member or --label-key json:<field>)"
        )
    raw = meta.column("label").to_pylist()
    labels = np.array([-1 if v is None else int(v) for v in raw], dtype=np.int64)
    status = np.asarray(meta.column("status").to_pylist(), dtype=object)
    bad = (status == "ok") & ((labels < 0) | (labels >= n_classes))
    if not bad.any():
        return meta, labels
    error = np.asarray(meta.column("error").to_pylist(), dtype=object)
    status = status.copy()
    status[bad] = "bad_label"
    for i in np.flatnonzero(bad):
        error[i] = (
            "label missing" if labels[i] < 0 else f"label {labels[i]} out of range [0, {n_classes})"
        )
    meta = meta.set_column(
        meta.schema.get_field_index("status"), "status", pa.array(status.tolist(), pa.string())
    )
    meta = meta.set_column(
        meta.schema.get_field_index("error"), "error", pa.array(error.tolist(), pa.string())
    )
    return meta, labels

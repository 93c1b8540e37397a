"""The embedding cache: clip-retrieval's layout, one partition per shard.

::

    DIR/img_emb/img_emb_{N}.npy          (rows, dim) float16, L2-normalised
    DIR/text_emb/text_emb_{N}.npy        (rows, dim) float16
    DIR/metadata/metadata_{N}.parquet    one row per sample, aligned by position

This is exactly what ``clip-retrieval inference`` writes (it names partitions
by a zero-padded number and puts ``image_path`` -- the webdataset key -- and
``caption`` in the metadata), so a LAION-style embedding folder can be scored
without re-embedding. nclean names each partition after its shard
(``00042.tar`` -> ``N = 00042``) and adds ``key``, ``shard``, ``index``,
``uid``, ``status`` and ``error`` columns; rows whose status is not ``ok``
hold zero vectors. When reading a folder that lacks those columns they are
derived: key from ``image_path`` (or the row position), shard from ``N``,
status ``ok`` -- except rows whose vectors are NaN, infinite or zero, which
become ``bad_embedding`` rows.

Writes are atomic per file; the metadata file is renamed last, so a
partition counts as present only when all three files are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from cleaner.errors import InputError
from cleaner.io.atomic import atomic_path

META_KEY = b"nclean_embed"
_PART_RE = re.compile(r"^metadata_(.+)\.parquet$")


def _natural_key(stem: str):
    return (0, int(stem), stem) if stem.isdigit() else (1, 0, stem)


@dataclass
class ShardEmbeddings:
    """One partition: metadata columns plus float32 embeddings."""

    stem: str
    meta: pa.Table  # key, shard, index, uid, status, error (+ label if present)
    image: np.ndarray  # (n, d) float32
    text: np.ndarray  # (n, d) float32

    @property
    def ok(self) -> np.ndarray:
        return np.asarray(self.meta.column("status").to_pylist(), dtype=object) == "ok"


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def atomic_write_parquet(table: pa.Table, path: Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


class EmbeddingCache:
    """Read and write the per-shard embedding layout in ``root``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    # -- paths --------------------------------------------------------------
    def img_path(self, stem: str) -> Path:
        return self.root / "img_emb" / f"img_emb_{stem}.npy"

    def text_path(self, stem: str) -> Path:
        return self.root / "text_emb" / f"text_emb_{stem}.npy"

    def meta_path(self, stem: str) -> Path:
        return self.root / "metadata" / f"metadata_{stem}.parquet"

    # -- writing ------------------------------------------------------------
    def write(
        self, stem: str, meta: pa.Table, image: np.ndarray, text: np.ndarray, info: dict
    ) -> None:
        if not (len(meta) == len(image) == len(text)):
            raise ValueError("metadata and embeddings must have the same number of rows")
        for sub in ("img_emb", "text_emb", "metadata"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        _atomic_save_npy(self.img_path(stem), np.asarray(image, dtype=np.float16))
        _atomic_save_npy(self.text_path(stem), np.asarray(text, dtype=np.float16))
        meta = meta.replace_schema_metadata({META_KEY: json.dumps(info, sort_keys=True).encode()})
        atomic_write_parquet(meta, self.meta_path(stem))  # last: the commit point

    # -- reading ------------------------------------------------------------
    def stems(self) -> list[str]:
        """Partitions present (metadata file exists), in natural order."""
        folder = self.root / "metadata"
        if not folder.is_dir():
            return []
        stems = [m.group(1) for p in folder.iterdir() if (m := _PART_RE.match(p.name))]
        return sorted(stems, key=_natural_key)

    def info(self, stem: str) -> dict | None:
        """The nclean settings a partition was made with (None for clip-retrieval's)."""
        md = pq.read_schema(self.meta_path(stem)).metadata or {}
        return json.loads(md[META_KEY]) if META_KEY in md else None

    def is_complete(self, stem: str) -> bool:
        """True if all three files exist and agree on the row count."""
        try:
            n = pq.read_metadata(self.meta_path(stem)).num_rows
            for p in (self.img_path(stem), self.text_path(stem)):
                arr = np.load(p, mmap_mode="r")
                if arr.ndim != 2 or arr.shape[0] != n:
                    return False
            return True
        except (OSError, ValueError, pa.ArrowException):
            return False

    def num_rows(self, stem: str) -> int:
        return pq.read_metadata(self.meta_path(stem)).num_rows

    def ok_mask(self, stem: str) -> np.ndarray:
        """Which rows are scorable. nclean's own partitions say so in their
        status column; others (clip-retrieval) need their vectors checked."""
        if self.info(stem) is not None:
            status = pq.read_table(self.meta_path(stem), columns=["status"]).column("status")
            return np.asarray(status.to_pylist(), dtype=object) == "ok"
        return self.load(stem).ok

    def open_vectors(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped (image, text) arrays, for sampling rows cheaply."""
        return np.load(self.img_path(stem), mmap_mode="r"), np.load(
            self.text_path(stem), mmap_mode="r"
        )

    def load(self, stem: str) -> ShardEmbeddings:
        """Load one partition, validating it; bad vectors become status rows."""
        meta_path = self.meta_path(stem)
        try:
            raw = pq.read_table(meta_path)
            image = np.load(self.img_path(stem)).astype(np.float32)
            text = np.load(self.text_path(stem)).astype(np.float32)
        except FileNotFoundError as exc:
            raise InputError(
                f"embedding partition {stem} is incomplete: {exc.filename} is missing"
            ) from None
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise InputError(f"embedding partition {stem} is unreadable: {exc}") from None
        n = len(raw)
        if image.ndim != 2 or text.ndim != 2 or image.shape[0] != n or text.shape[0] != n:
            raise InputError(
                f"embedding partition {stem}: row counts disagree (metadata {n}, "
                f"img_emb {image.shape[0] if image.ndim else '?'}, text_emb {text.shape[0] if text.ndim else '?'})"
            )
        if image.shape[1] != text.shape[1]:
            raise InputError(
                f"embedding partition {stem}: image dim {image.shape[1]} != text dim {text.shape[1]}"
            )
        meta = _standard_meta(raw, stem)
        meta, image, text = _flag_bad_vectors(meta, image, text)
        return ShardEmbeddings(stem=stem, meta=meta, image=image, text=text)


def _standard_meta(raw: pa.Table, stem: str) -> pa.Table:
    """Give clip-retrieval metadata nclean's key/shard/index/uid/status/error."""
    n = len(raw)
    cols = raw.column_names

    def col(name, default):
        return raw.column(name) if name in cols else pa.array(default)

    if "key" in cols:
        key = raw.column("key").cast(pa.string())
    elif "image_path" in cols:
        key = raw.column("image_path").cast(pa.string())
    else:
        key = pa.array([str(i) for i in range(n)], pa.string())
    out = {
        "key": key,
        "shard": col("shard", [stem] * n).cast(pa.string()),
        "index": col("index", np.arange(n, dtype=np.int64)).cast(pa.int64()),
        "uid": col("uid", [None] * n).cast(pa.string()),
        "status": col("status", ["ok"] * n).cast(pa.string()),
        "error": col("error", [None] * n).cast(pa.string()),
    }
    if "label" in cols:
        out["label"] = raw.column("label").cast(pa.int64())
    return pa.table(out)


def _flag_bad_vectors(meta: pa.Table, image: np.ndarray, text: np.ndarray):
    status = np.asarray(meta.column("status").to_pylist(), dtype=object)
    ok = status == "ok"
    finite = np.isfinite(image).all(1) & np.isfinite(text).all(1)
    inorm = np.linalg.norm(np.where(np.isfinite(image), image, 0), axis=1)
    tnorm = np.linalg.norm(np.where(np.isfinite(text), text, 0), axis=1)
    bad = ok & (~finite | (inorm < 1e-6) | (tnorm < 1e-6))
    if bad.any():
        status = status.copy()
        status[bad] = "bad_embedding"
        error = np.asarray(meta.column("error").to_pylist(), dtype=object)
        error[bad & ~finite] = "embedding has NaN or infinite values"
        error[bad & finite] = "embedding is a zero vector"
        meta = meta.set_column(
            meta.schema.get_field_index("status"), "status", pa.array(status.tolist(), pa.string())
        )
        meta = meta.set_column(
            meta.schema.get_field_index("error"), "error", pa.array(error.tolist(), pa.string())
        )
    image = np.where(bad[:, None] | ~np.isfinite(image), 0.0, image).astype(np.float32)
    text = np.where(bad[:, None] | ~np.isfinite(text), 0.0, text).astype(np.float32)
    # clip-retrieval stores normalised vectors; renormalise anyway (fp16 rounding, other tools)
    for arr in (image, text):
        norms = np.linalg.norm(arr, axis=1, keepdims=True)
        np.divide(arr, norms, out=arr, where=norms > 0)
    return meta, image, text


def validate_dir(root: str | Path) -> EmbeddingCache:
    cache = EmbeddingCache(root)
    if not Path(root).is_dir():
        raise InputError(f"embeddings directory not found: {root}")
    if not cache.stems():
        raise InputError(
            f"{root} holds no metadata/metadata_*.parquet: not an nclean or clip-retrieval embedding folder"
        )
    return cache

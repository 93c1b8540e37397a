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
hold zero vectors.

Whose columns they are is told by the marker nclean writes into its own
metadata files (the Parquet key ``nclean_embed``, see :meth:`EmbeddingCache.info`),
never by the column names: ``clip-retrieval inference --enable_metadata``
copies img2dataset's columns (``key``, ``url``, ``uid``, ``status`` =
``"success"``, ``error_message``, ``width``, ...) into its metadata, and
those must not steer nclean. For a partition without the marker nclean's
columns are derived: key from ``image_path`` (clip-retrieval's webdataset
reader writes the sample's ``__key__`` there; else img2dataset's ``key``;
else the row position), uid from ``uid`` (DataComp), shard from ``N``,
index from the position, status ``ok``. Everywhere -- nclean's partitions
too -- rows whose vectors are NaN, infinite or zero become ``bad_embedding``
rows, and :meth:`EmbeddingCache.ok_mask` (what the fits read) agrees with
:meth:`EmbeddingCache.load` (what the transform reads) on which rows those are.

:func:`sample_join` says how a sidecar scored from a folder finds its
samples in the shards: by ``(shard, key)`` for nclean's partitions (their
shard column names the tar), else by key when keys are unique across the
folder (img2dataset's are: the shard id is their prefix), else by uid.

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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from cleaner.errors import InputError
from cleaner.io.atomic import atomic_path

META_KEY = b"nclean_embed"
_PART_RE = re.compile(r"^metadata_(.+)\.parquet$")
_CHUNK = 16_384  # rows per block when checking memory-mapped vectors
SHOWN = 5  # repeated keys named in a message


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
        self._ok: dict[str, tuple] = {}  # stem -> (file stats, ok mask)

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
        """The nclean settings a partition was made with; None for one that
        nclean did not write (clip-retrieval's): the marker of nclean's columns."""
        md = self._schema(stem).metadata or {}
        return json.loads(md[META_KEY]) if META_KEY in md else None

    def _schema(self, stem: str) -> pa.Schema:
        path = self.meta_path(stem)
        try:
            return pq.read_schema(path)
        except FileNotFoundError:
            raise InputError(
                f"embedding partition {stem} is incomplete: {path} is missing"
            ) from None
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise InputError(
                f"embedding partition {stem}: {path} is not a readable Parquet file ({exc})"
            ) from None

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
        self._schema(stem)  # a one-line InputError for a file that is not Parquet
        return pq.read_metadata(self.meta_path(stem)).num_rows

    def ok_mask(self, stem: str) -> np.ndarray:
        """Which rows are scorable -- exactly the rows :meth:`load` leaves ``ok``.

        nclean's own partitions say which samples decoded in their status
        column (a foreign status column says nothing to nclean); in every
        partition a row whose vectors are NaN, infinite or zero is not
        scorable. Checked block by block on the memory-mapped arrays and
        remembered while the files stay unchanged (the fits ask repeatedly).
        """
        paths = (self.meta_path(stem), self.img_path(stem), self.text_path(stem))
        stamp = tuple((st.st_size, st.st_mtime_ns) for st in map(_stat, paths))
        hit = self._ok.get(stem)
        if hit is not None and hit[0] == stamp:
            return hit[1].copy()
        n = self.num_rows(stem)
        ok = np.ones(n, dtype=bool)
        if self.info(stem) is not None:
            status = pq.read_table(self.meta_path(stem), columns=["status"]).column("status")
            ok = np.asarray(status.to_pylist(), dtype=object) == "ok"
        try:
            img, txt = self.open_vectors(stem)
        except (OSError, ValueError) as exc:
            raise InputError(f"embedding partition {stem} is unreadable: {exc}") from None
        if img.ndim != 2 or txt.ndim != 2 or len(img) != n or len(txt) != n:
            self.load(stem)  # raises the one-line error naming what disagrees
        ok &= good_vectors(img, txt)
        self._ok[stem] = (stamp, ok)
        return ok.copy()

    def read_meta(self, stem: str) -> pa.Table:
        """nclean's metadata columns of one partition, without the vectors
        (statuses as stored: bad vectors are found by :meth:`load`)."""
        own = self.info(stem) is not None
        try:
            raw = pq.read_table(self.meta_path(stem))
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise InputError(f"embedding partition {stem} is unreadable: {exc}") from None
        return _standard_meta(raw, stem, own)

    def open_vectors(self, stem: str) -> tuple[np.ndarray, np.ndarray]:
        """Memory-mapped (image, text) arrays, for sampling rows cheaply."""
        return np.load(self.img_path(stem), mmap_mode="r"), np.load(
            self.text_path(stem), mmap_mode="r"
        )

    def load(self, stem: str) -> ShardEmbeddings:
        """Load one partition, validating it; bad vectors become status rows."""
        meta_path = self.meta_path(stem)
        own = self.info(stem) is not None
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
        meta = _standard_meta(raw, stem, own)
        meta, image, text = _flag_bad_vectors(meta, image, text)
        return ShardEmbeddings(stem=stem, meta=meta, image=image, text=text)


def _standard_meta(raw: pa.Table, stem: str, own: bool) -> pa.Table:
    """nclean's key/shard/index/uid/status/error (+ label) for one partition.

    ``own``: the partition carries nclean's marker, so its columns are
    nclean's. Otherwise they are another tool's (clip-retrieval copies
    img2dataset's ``key``, ``status`` = ``"success"``, ... into its
    metadata) and only identify samples: nclean's columns are derived.
    """
    n = len(raw)
    cols = raw.column_names

    def col(name, default):
        return raw.column(name) if own and name in cols else pa.array(default)

    key_from = "key" if own else "image_path"
    if key_from not in cols:
        key_from = next((c for c in ("key", "image_path") if c in cols), None)
    key = (
        raw.column(key_from).cast(pa.string())
        if key_from
        else pa.array([str(i) for i in range(n)], pa.string())
    )
    uid = raw.column("uid") if "uid" in cols else pa.array([None] * n)
    out = {
        "key": key,
        "shard": col("shard", [stem] * n).cast(pa.string()),
        "index": col("index", np.arange(n, dtype=np.int64)).cast(pa.int64()),
        "uid": uid.cast(pa.string()),
        "status": col("status", ["ok"] * n).cast(pa.string()),
        "error": col("error", [None] * n).cast(pa.string()),
    }
    label = raw.column("label") if "label" in cols else None
    if label is not None and (own or pa.types.is_integer(label.type)):
        out["label"] = label.cast(pa.int64())
    return pa.table(out)


def _stat(path: Path):
    try:
        return path.stat()
    except FileNotFoundError:
        raise InputError(f"embedding partition is incomplete: {path} is missing") from None


def good_vectors(image: np.ndarray, text: np.ndarray) -> np.ndarray:
    """True per row where both vectors are finite and not zero (read in blocks,
    so memory-mapped float16 arrays are never copied whole).

    Wider rows: the squared norm (summed in float64) is NaN or infinite
    exactly when a value is, and below 1e-12 exactly when the norm is below
    1e-6."""
    out = np.empty(len(image), dtype=bool)
    for lo in range(0, len(image), _CHUNK):
        good = np.ones(min(_CHUNK, len(image) - lo), dtype=bool)
        for arr in (image, text):
            block = arr[lo : lo + _CHUNK]
            good &= _good_f16(block) if block.dtype == np.float16 else _good_wide(block)
        out[lo : lo + _CHUNK] = good
    return out


def _good_wide(block: np.ndarray) -> np.ndarray:
    block = np.asarray(block, dtype=np.float32)
    squared = np.einsum("ij,ij->i", block, block, dtype=np.float64)
    return np.isfinite(squared) & (squared >= 1e-12)


_F16_INF_BITS = 0x7C00  # |x| bits at or above it: inf or NaN
_F16_BIG_BITS = 0x0011  # |x| >= 1.01e-6: the row's norm is surely >= 1e-6


def _good_f16(block: np.ndarray) -> np.ndarray:
    """:func:`good_vectors` for float16 rows (the cache's format), unconverted:
    a float16's magnitude bits order like its magnitude, so one integer max per
    row finds NaN/inf and rows with a value >= 1e-6 (8x faster than a float32
    pass). Rows with only tinier values get the exact check."""
    magnitude = np.bitwise_and(np.asarray(block).view(np.uint16), 0x7FFF).max(axis=1)
    good = (magnitude < _F16_INF_BITS) & (magnitude >= _F16_BIG_BITS)
    unsure = np.flatnonzero(magnitude < _F16_BIG_BITS)
    if len(unsure):
        good[unsure] = _good_wide(np.asarray(block)[unsure])
    return good


def _flag_bad_vectors(meta: pa.Table, image: np.ndarray, text: np.ndarray):
    status = np.asarray(meta.column("status").to_pylist(), dtype=object)
    ok = status == "ok"
    finite = np.isfinite(image).all(1) & np.isfinite(text).all(1)
    bad = ok & ~good_vectors(image, text)
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
        normalise_rows(arr)
    return meta, image, text


def normalise_rows(block: np.ndarray) -> np.ndarray:
    """L2-normalise the float32 rows of ``block`` in place (zero rows stay
    zero). The squared norms come from one einsum, with no squared copy of
    the block (``np.linalg.norm`` makes one: ~5x slower on 512-d rows)."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
    np.divide(block, norms, out=block, where=norms > 0)
    return block


def sample_join(cache: EmbeddingCache, stems: list[str]) -> tuple[str, str | None]:
    """How a sidecar scored from these partitions finds its samples in the
    shards, and a warning when it cannot do so unambiguously.

    ``"shard_key"`` when every partition is nclean's (its shard column names
    the tar); otherwise the shard is unknown (a clip-retrieval partition
    spans shards), so ``"key"`` when keys are unique across the folder, else
    ``"uid"`` when uids are, else ``"key"`` with a warning naming repeated
    keys (a lookup of one of them is then an error).
    """
    if all(cache.info(stem) is not None for stem in stems):
        return "shard_key", None
    metas = [cache.read_meta(stem) for stem in stems]
    keys = pa.chunked_array([m.column("key") for m in metas], pa.string())
    if not (repeated := repeated_values(keys)):
        return "key", None
    uids = pa.chunked_array([m.column("uid") for m in metas], pa.string())
    if uids.null_count == 0 and not repeated_values(uids):
        return "uid", None
    shown = ", ".join(repr(k) for k in repeated[:SHOWN])
    return "key", (
        f"keys repeat in {cache.root} ({shown}) and there are no unique uids: "
        "the sidecar cannot tell those samples apart when joined to shards"
    )


def repeated_values(values: pa.ChunkedArray | pa.Array) -> list:
    """Values that occur more than once (a null counts as repeated if any row lacks one)."""
    if values.null_count:
        return [None]
    counts = pc.value_counts(values)
    many = counts.filter(pc.greater(counts.field("counts"), 1))
    return many.field("values").to_pylist()


def validate_dir(root: str | Path) -> EmbeddingCache:
    cache = EmbeddingCache(root)
    if not Path(root).is_dir():
        raise InputError(f"embeddings directory not found: {root}")
    if not cache.stems():
        raise InputError(
            f"{root} holds no metadata/metadata_*.parquet: not an nclean or clip-retrieval embedding folder"
        )
    for stem in cache.stems():
        cache.info(stem)  # a metadata file that is not Parquet: exit 3 naming it, up front
    return cache

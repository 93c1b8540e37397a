"""The embedding stage: shards -> normalised image/text embeddings per shard.

Decoding runs in ``torch.utils.data.DataLoader`` workers, one shard per
worker at a time (so each shard is read sequentially by one process and its
batches arrive in order); the model runs in the main process on whole
batches. Workers ship uint8 pixels at the model's input size; conversion to
float and normalisation happen per batch on the device (see
:meth:`cleaner.estimator.model.Estimator.normalise_uint8`). Batches never span two
shards, so a shard's embeddings do not depend on which other shards are in
the job -- a resumed job reproduces them exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cleaner.estimator.model import Estimator
from cleaner.io.decode import Prepared, SampleSpec, prepare_sample
from cleaner.io.shards import ShardReadError, ShardReport, read_shard, shard_stem

META_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("index", pa.int64()),
        ("uid", pa.string()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("image_path", pa.string()),  # clip-retrieval's name for the key
        ("label", pa.int64()),  # class label when labels are read (else null)
    ]
)


@dataclass
class PreparedBatch:
    """Up to ``batch_size`` samples of one shard, decoded (worker output)."""

    shard_pos: int
    rows: list[Prepared]
    images: torch.Tensor | None  # uint8 (m, H, W, 3) for the ok rows
    tokens: torch.Tensor | None  # int64 (m, L) for the ok rows
    last: bool = False
    fatal: str | None = None  # the shard could not be opened at all
    warnings: list[str] = field(default_factory=list)


def _pack(shard_pos: int, rows: list[Prepared], last: bool, warnings=()) -> PreparedBatch:
    ok = [r for r in rows if r.status == "ok"]
    images = torch.from_numpy(np.stack([r.image for r in ok])) if ok else None
    tokens = torch.from_numpy(np.stack([r.tokens for r in ok]).astype(np.int64)) if ok else None
    for r in ok:  # the pixels now live in the batch tensor
        r.image = r.tokens = None
    return PreparedBatch(shard_pos, rows, images, tokens, last=last, warnings=list(warnings))


class ShardBatchDataset(IterableDataset):
    """Yields :class:`PreparedBatch` objects; each worker takes every
    ``num_workers``-th shard, so shards are never split between workers."""

    def __init__(
        self,
        shards: list[Path],
        spec: SampleSpec,
        pil_transform,
        tokenizer,
        batch_size: int,
        draft_size: int | None,
    ):
        self.shards = list(shards)
        self.spec = spec
        self.pil_transform = pil_transform
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.draft_size = draft_size

    def __iter__(self) -> Iterator[PreparedBatch]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        wanted = self.spec.wanted_members()
        for pos in range(wid, len(self.shards), nw):
            report = ShardReport()
            rows: list[Prepared] = []
            try:
                for raw in read_shard(self.shards[pos], wanted, report):
                    rows.append(
                        prepare_sample(
                            raw, self.spec, self.pil_transform, self.tokenizer, self.draft_size
                        )
                    )
                    if len(rows) == self.batch_size:
                        yield _pack(pos, rows, last=False)
                        rows = []
            except ShardReadError as exc:
                yield PreparedBatch(pos, [], None, None, last=True, fatal=str(exc))
                continue
            yield _pack(pos, rows, last=True, warnings=report.warnings)


def _worker_init(_):
    # Decode workers are single-threaded; the main process owns the cores for the model.
    torch.set_num_threads(1)


def iter_prepared(
    shards, spec, estimator: Estimator, batch_size: int, workers: int, draft: bool = True
):
    """The decode half alone (also what the decode-only benchmark measures)."""
    dataset = ShardBatchDataset(
        shards,
        spec,
        estimator.pil_transform,
        estimator.tokenizer,
        batch_size,
        draft_size=estimator.image_size if draft else None,
    )
    loader = DataLoader(
        dataset,
        batch_size=None,
        num_workers=workers,
        worker_init_fn=_worker_init if workers else None,
        pin_memory=estimator.device.startswith("cuda"),
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
    )
    return iter(loader)


@dataclass
class ShardResult:
    """Everything the embedding stage produced for one shard."""

    path: Path
    stem: str
    meta: pa.Table | None
    image: np.ndarray | None  # float16 (n, d); zero rows where status != ok
    text: np.ndarray | None
    fatal: str | None = None
    warnings: list[str] = field(default_factory=list)


def embed_shards(
    estimator: Estimator,
    shards: list[Path],
    spec: SampleSpec,
    batch_size: int,
    workers: int,
    on_shard: Callable[[ShardResult], None],
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Embed ``shards``; call ``on_shard`` once per shard as soon as it is done
    (in completion order, which may differ from input order)."""
    dim = estimator.embed_dim
    pending: dict[int, list] = {}
    for batch in iter_prepared(shards, spec, estimator, batch_size, workers):
        path = shards[batch.shard_pos]
        if batch.fatal:
            on_shard(ShardResult(path, shard_stem(path), None, None, None, fatal=batch.fatal))
            continue
        n = len(batch.rows)
        img = np.zeros((n, dim), np.float16)
        txt = np.zeros((n, dim), np.float16)
        if batch.images is not None:
            ok = np.array([r.status == "ok" for r in batch.rows])
            img[ok] = estimator.encode_images(estimator.normalise_uint8(batch.images)).cpu().numpy()
            txt[ok] = estimator.encode_text(batch.tokens).cpu().numpy()
        pending.setdefault(batch.shard_pos, []).append((batch.rows, img, txt))
        if on_batch:
            on_batch(n)
        if batch.last:
            parts = pending.pop(batch.shard_pos)
            rows = [r for p in parts for r in p[0]]
            meta = pa.table(
                {
                    "key": [r.key for r in rows],
                    "shard": [path.name] * len(rows),
                    "index": [r.index for r in rows],
                    "uid": [r.uid for r in rows],
                    "status": [r.status for r in rows],
                    "error": [r.error for r in rows],
                    "image_path": [r.key for r in rows],
                    "label": [r.label for r in rows],
                },
                schema=META_SCHEMA,
            )
            on_shard(
                ShardResult(
                    path,
                    shard_stem(path),
                    meta,
                    np.concatenate([p[1] for p in parts])
                    if parts
                    else np.zeros((0, dim), np.float16),
                    np.concatenate([p[2] for p in parts])
                    if parts
                    else np.zeros((0, dim), np.float16),
                    warnings=batch.warnings,
                )
            )

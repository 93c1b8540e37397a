"""The embedding stage: shards -> normalised image/text embeddings per shard.

Decoding runs in ``torch.utils.data.DataLoader`` workers, one shard per
worker at a time (so each shard is read sequentially by one process and its
batches arrive in order); the model runs in the main process on whole
batches. Workers ship uint8 pixels at the model's input size; conversion to
float and normalisation happen per batch on the device (see
:meth:`cleaner.estimator.model.Estimator.normalise_uint8`). Batches never span two
shards, so a shard's embeddings do not depend on which other shards are in
the job -- a resumed job reproduces them exactly.

On a CPU the model and the decode workers share the same cores, and how
they share them is chosen from their measured costs (:class:`CoreScheduler`):
a model that costs more per sample than decoding runs on all cores while the
workers wait at a gate (the stages take turns: no model thread is ever
pre-empted by a worker in the middle of an OpenMP region, where its partner
threads would stall waiting for it); a cheap model runs on one thread with
the workers decoding beside it. Both give bit-identical embeddings.
"""

from __future__ import annotations

import multiprocessing
import os
import time
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
    decode_cpu_s: float = 0.0  # CPU seconds the worker spent on this batch (read + decode)


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
        gate: DecodeGate | None = None,
    ):
        self.shards = list(shards)
        self.gate = gate
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
            cpu0 = time.process_time()
            try:
                for raw in read_shard(self.shards[pos], wanted, report):
                    if self.gate is not None:
                        self.gate.wait()
                    rows.append(
                        prepare_sample(
                            raw, self.spec, self.pil_transform, self.tokenizer, self.draft_size
                        )
                    )
                    if len(rows) == self.batch_size:
                        batch = _pack(pos, rows, last=False)
                        batch.decode_cpu_s, cpu0 = time.process_time() - cpu0, time.process_time()
                        yield batch
                        rows = []
            except ShardReadError as exc:
                yield PreparedBatch(pos, [], None, None, last=True, fatal=str(exc))
                continue
            batch = _pack(pos, rows, last=True, warnings=report.warnings)
            batch.decode_cpu_s = time.process_time() - cpu0
            yield batch


def _worker_init(_):
    # Decode workers are single-threaded; the main process owns the cores for the model.
    torch.set_num_threads(1)


class DecodeGate:
    """Lets the decode workers run only while the model is not computing.

    An event shared with the (forked) workers: open = decode. A worker checks
    it before each sample, so it stops within one sample's decode after the
    main process closes it. The wait is bounded: if the main process never
    reopens the gate (it died), workers carry on rather than hang.
    """

    MAX_WAIT_S = 60.0

    def __init__(self):
        self._open = multiprocessing.get_context().Event()
        self.open, self.close = self._open.set, self._open.clear
        self.open()

    def wait(self) -> None:
        self._open.wait(self.MAX_WAIT_S)


@dataclass(frozen=True)
class Layout:
    """How the main process's model shares the cores with the decode workers."""

    threads: int  # torch threads of the main process
    turns: bool  # workers wait at the gate while the model computes


def choose_layout(
    model_n_s: float, model_few_s: float, decode_cpu_s: float, ncpu: int, threads: int, workers: int
) -> tuple[Layout, dict]:
    """The faster layout, from measured per-sample costs.

    ``model_n_s``: model wall seconds per sample on ``threads`` threads with
    the workers paused; ``model_few_s``: the same on the overlap layout's
    thread count (the cores the workers leave, at least 1) with them running;
    ``decode_cpu_s``: a worker's CPU seconds per sample. Taking turns costs
    model + decode spread over the workers; overlapping is bound by the
    slowest of the model alone, the decoding alone and the cores' total time.
    Returns the layout and the two estimates (samples/s) that decided it.
    """
    few = max(1, min(threads, ncpu - workers))
    turns_s = model_n_s + decode_cpu_s / max(1, min(workers, ncpu))
    overlap_s = max(
        model_few_s,
        decode_cpu_s / max(1, workers),
        (model_few_s * few + decode_cpu_s) / ncpu,
    )
    rates = {"turns": 1.0 / max(turns_s, 1e-12), "overlap": 1.0 / max(overlap_s, 1e-12)}
    if overlap_s < turns_s and few < threads:
        return Layout(few, turns=False), rates
    return Layout(threads, turns=True), rates


def _cpu_count() -> int:
    """The cores this process may run on (its affinity mask, where the OS has one)."""
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


class CoreScheduler:
    """Picks the layout of a CPU embedding job from its first batches.

    The first full-size model batch warms the model up, the next two time the
    turns layout (all threads, workers gated). When even a perfectly scaling
    model on the overlap layout's threads would be 1.5x slower than that, the
    turns layout stays without trying the other (a costly model: batches on
    too few threads would cost more than the choice saves); otherwise the
    next two batches time the overlap layout and :func:`choose_layout` picks. With
    no decode workers, one thread, or the model on a GPU, nothing is switched
    (the gate stays open).
    """

    CLEAR_MARGIN = 1.5
    TIMED_BATCHES = 2  # per layout

    def __init__(self, device: str, workers: int):
        self.threads = torch.get_num_threads()
        self.ncpu = _cpu_count()
        self.active = workers > 0 and not device.startswith("cuda") and self.threads > 1
        self.workers = workers
        self.few = max(1, min(self.threads, self.ncpu - workers))  # the overlap layout's threads
        self.gate = DecodeGate() if self.active else None
        self.layout = Layout(self.threads, turns=self.active)
        self.decided: dict | None = None
        self._warm = False
        self._largest = 0
        self._timed: dict[str, float] = {}  # layout -> fastest seconds per sample
        self._count: dict[str, int] = {}
        self._decode: list[float] = []

    def _current(self) -> Layout:
        if self.decided is None and self._count.get("turns", 0) >= self.TIMED_BATCHES:
            return Layout(self.few, turns=False)  # the overlap layout's timed batches
        return self.layout

    def run(self, batch: PreparedBatch, fn: Callable[[], None]) -> None:
        """Run the model on ``batch`` (``fn``) under the current layout."""
        if not self.active:
            return fn()
        layout = self._current()
        torch.set_num_threads(layout.threads)
        if layout.turns:
            self.gate.close()
        t0 = time.perf_counter()
        try:
            fn()
        finally:
            self.gate.open()
        self._record(batch, layout, time.perf_counter() - t0)

    def _record(self, batch: PreparedBatch, layout: Layout, seconds: float) -> None:
        n = len(batch.images)
        if batch.decode_cpu_s > 0:
            self._decode.append(batch.decode_cpu_s / len(batch.rows))
        self._largest = max(self._largest, n)
        # a shard's short last batch times the model's fixed costs, not its per-sample cost
        if self.decided is not None or n < max(8, self._largest // 2) or not self._decode:
            return
        if not self._warm:
            self._warm = True
            return
        key = "turns" if layout.turns else "overlap"
        # the fastest of a few batches: another process taking the cores once must not decide
        self._timed[key] = min(self._timed.get(key, float("inf")), seconds / n)
        self._count[key] = self._count.get(key, 0) + 1
        if self._count[key] < self.TIMED_BATCHES:
            return
        decode = float(np.median(self._decode))
        turns = self._timed["turns"]
        overlap = self._timed.get("overlap")
        if overlap is None:  # the overlap layout if the model scaled perfectly
            guess = turns * self.threads / self.few
            _, rates = choose_layout(turns, guess, decode, self.ncpu, self.threads, self.workers)
            if rates["turns"] < self.CLEAR_MARGIN * rates["overlap"]:
                return  # too close to call: time the overlap layout on the next batch
        self.layout, rates = choose_layout(
            turns, overlap or guess, decode, self.ncpu, self.threads, self.workers
        )
        self.decided = {
            "layout": "turns" if self.layout.turns else "overlap",
            "threads": self.layout.threads,
            "estimated_per_s": {k: round(v, 1) for k, v in rates.items()},
            "overlap_timed": overlap is not None,
            "decode_cpu_ms": round(1e3 * decode, 3),
        }

    def close(self) -> None:
        if self.active:
            self.gate.open()
            torch.set_num_threads(self.threads)


def iter_prepared(
    shards,
    spec,
    estimator: Estimator,
    batch_size: int,
    workers: int,
    draft: bool = True,
    gate: DecodeGate | None = None,
):
    """The decode half alone (also what the decode-only benchmark measures).
    With a ``gate``, workers decode only while it is open."""
    dataset = ShardBatchDataset(
        shards,
        spec,
        estimator.pil_transform,
        estimator.tokenizer,
        batch_size,
        draft_size=estimator.image_size if draft else None,
        gate=gate,
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


def _shard_meta(path: Path, rows: list[Prepared]) -> pa.Table:
    return pa.table(
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


def _encode_batch(estimator: Estimator, batch: PreparedBatch, sched: CoreScheduler):
    """(image, text) float16 embeddings of a batch's rows; zero rows where status != ok."""
    n, dim = len(batch.rows), estimator.embed_dim
    img = np.zeros((n, dim), np.float16)
    txt = np.zeros((n, dim), np.float16)
    if batch.images is not None:
        ok = np.array([r.status == "ok" for r in batch.rows])

        def model():
            pixels = estimator.normalise_uint8(batch.images)
            img[ok] = estimator.encode_images(pixels).cpu().numpy()
            txt[ok] = estimator.encode_text(batch.tokens).cpu().numpy()

        sched.run(batch, model)
    return img, txt


def embed_shards(
    estimator: Estimator,
    shards: list[Path],
    spec: SampleSpec,
    batch_size: int,
    workers: int,
    on_shard: Callable[[ShardResult], None],
    on_batch: Callable[[int], None] | None = None,
) -> dict | None:
    """Embed ``shards``; call ``on_shard`` once per shard as soon as it is done
    (in completion order, which may differ from input order). Returns the
    core layout the job chose (:class:`CoreScheduler`), None when it chose none."""
    pending: dict[int, list] = {}  # shard -> its batches so far (never empty once listed)
    sched = CoreScheduler(estimator.device, workers)
    try:
        for batch in iter_prepared(shards, spec, estimator, batch_size, workers, gate=sched.gate):
            path = shards[batch.shard_pos]
            if batch.fatal:
                on_shard(ShardResult(path, shard_stem(path), None, None, None, fatal=batch.fatal))
                continue
            img, txt = _encode_batch(estimator, batch, sched)
            pending.setdefault(batch.shard_pos, []).append((batch.rows, img, txt))
            if on_batch:
                on_batch(len(batch.rows))
            if not batch.last:
                continue
            parts = pending.pop(batch.shard_pos)
            rows = [r for p in parts for r in p[0]]
            image, text = (np.concatenate([p[i] for p in parts]) for i in (1, 2))
            meta = _shard_meta(path, rows)
            on_shard(
                ShardResult(path, shard_stem(path), meta, image, text, warnings=batch.warnings)
            )
    finally:
        sched.close()
    return sched.decided

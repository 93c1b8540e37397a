"""The transform stage: each shard's part, on its own, from the fitted
methods and the shared pools; and the merge of the parts into one file.

A part is written atomically and carries the fit id in its metadata, so a
resumed job knows which parts are finished and current.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from cleaner.io.sidecar import atomic_write_table, build_part, merge_parts, part_is_valid
from cleaner.methods import catalog
from cleaner.methods.threads import capped_workers, thread_beside
from pipelines.heap import trim
from pipelines.search_ahead import GROUP_ROWS, answer_ahead, groups, plan_groups
from pipelines.shard_view import ShardView

# rows scored between two heap trims (pipelines.heap): each trim hands the
# freed temporaries back to the system, and the next rows fault them in
# again, zeroed. Measured at 1M rows: trimming after every group of shards
# (50 trims) cost 1.6 s of system time in the transform without match, 3.6 s
# with it, and kept the peak RSS only 0.08 GiB lower than no trim at all.
TRIM_ROWS = 1 << 18


def transform_shard(
    view: ShardView, stem: str, scorers: dict, pools: dict, methods: list[str], metadata: dict
) -> pa.Table:
    columns = shard_columns(view, stem, scorers, pools, methods)
    return build_part(view.meta, view.ok, columns, methods, metadata)


def shard_columns(view: ShardView, stem: str, scorers: dict, pools: dict, methods) -> dict:
    """The ``methods``' columns for one shard, each from its own transform."""
    columns: dict = {}
    for name in methods:
        columns.update(catalog.get(name).transform(scorers[name], view.pairs, pools, stem))
    return columns


def params_for_metadata(params: dict) -> dict:
    """Fitted params as every part carries them (a method may slim them)."""
    return {name: catalog.get(name).metadata(p) for name, p in params.items()}


def parts_to_do(layout, stems: list[str], fit_id: str, overwrite: bool) -> list[tuple[int, str]]:
    """(position, stem) of every part that is missing, invalid or of another fit."""
    return [
        (pos, stem)
        for pos, stem in enumerate(stems)
        if overwrite
        or not (
            layout.part_path(stem).exists()
            and part_is_valid(layout.part_path(stem), {"fit_id": fit_id})
        )
    ]


def transform_local(todo, data, scorers, pools, methods, base_meta, layout, on_done) -> None:
    """Each part in turn, the next shard read while this one is scored; the
    neighbour searches of a few shards run together (:mod:`pipelines.search_ahead`),
    and so do the transforms of methods that batch (``Method.batch_rows``):
    their shards' parts are written once the batch is done."""
    # no pools: the shard's work is light and reading is the cost, so read two ahead
    views = data.read(todo, ahead=1 if pools else 2)
    sizes = [data.ok_counts[pos] for pos, _ in todo]
    batched = [m for m in methods if catalog.get(m).batch_rows]
    alone = [m for m in methods if m not in batched]
    batch_rows = max([catalog.get(m).batch_rows for m in batched], default=0)
    waiting, rows, untrimmed = [], 0, 0
    # the finisher's thread; on an error here the batch in flight ends
    # (without raising its own over it) before the thread stops
    with thread_beside("nclean-finish") as pool:
        finisher = _Finisher(pool, scorers, batched, methods, base_meta, layout, on_done)
        for group in groups(views, plan_groups(sizes, GROUP_ROWS if pools else 0)):
            answered = answer_ahead(group, scorers, pools, methods) if pools else pools
            for stem, view in group:
                columns = shard_columns(view, stem, scorers, answered, alone)
                prepared = {
                    m: catalog.get(m).prepare(scorers[m], view.pairs, stem) for m in batched
                }
                waiting.append((stem, view.meta, view.ok, columns, prepared))
                rows += len(view.pairs)
                untrimmed += len(view.pairs)
            del group, answered  # the group's views: memory is one group's
            if rows >= batch_rows:
                finisher.submit(waiting)
                waiting, rows = [], 0
            if untrimmed >= TRIM_ROWS:
                trim()
                untrimmed = 0
        finisher.finish_in_line(waiting)  # the rest


class _Finisher:
    """Finishes each full batch (the batched methods' columns, then its
    parts) on one thread beside the main one, which scores the next shards
    meanwhile: the other methods' transforms leave a core idle about a third
    of the time (1.5 of 2 cores used at 1M rows), and match's batch work
    fits there. One batch at a time (memory: two batches' rows), capped at
    one worker thread. Measured at 1M rows with match: transform 41.4-44.1
    s finished in line, 39.1-39.8 s beside (three runs each). Without
    batched methods each group of shards is a batch: its parts are written
    beside."""

    def __init__(self, pool, *finish_args):
        self.pool, self.args = pool, finish_args  # pool: one thread (thread_beside)
        self.pending = None

    def _run(self, waiting: list) -> None:
        with capped_workers(1):
            _finish(waiting, *self.args)

    def submit(self, waiting: list) -> None:
        self.wait()
        self.pending = self.pool.submit(self._run, waiting)

    def wait(self) -> None:
        """Until the batch in flight is written (its error raised here)."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def finish_in_line(self, waiting: list) -> None:
        """The last (partial) batch, on this thread, after the one in flight."""
        self.wait()
        _finish(waiting, *self.args)


def _finish(waiting: list, scorers, batched, methods, base_meta, layout, on_done) -> None:
    """The batched methods' columns for the waiting shards, then their parts."""
    if not waiting:
        return
    for name in batched:
        done = catalog.get(name).transform_batch(scorers[name], [w[4][name] for w in waiting])
        for (_, _, _, columns, _), cols in zip(waiting, done, strict=True):
            columns.update(cols)
    for stem, meta, ok, columns, _ in waiting:
        table = build_part(meta, ok, columns, methods, {**base_meta, "shard": stem})
        atomic_write_table(table, layout.part_path(stem))
        on_done(stem)


def status_counts(parts) -> dict[str, int]:
    """Rows per status, read from the parts themselves: what a reader will see."""
    counts: dict[str, int] = {}
    for p in parts:
        for status in pq.read_table(p, columns=["status"]).column("status").to_pylist():
            counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items()))


def merge_if_stale(parts, merged, meta: dict, fit_id: str, rows: int, changed: bool) -> bool:
    """Merge the parts into ``merged`` unless it is already current; True if written."""
    stems = meta["shards"]
    current = part_is_valid(merged, {"fit_id": fit_id, "shards": stems}) and (
        pq.read_metadata(merged).num_rows == rows
    )
    if changed or not current:
        merge_parts(parts, merged, meta)
        return True
    return False

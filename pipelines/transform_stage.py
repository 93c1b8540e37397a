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
from pipelines.heap import trim
from pipelines.search_ahead import GROUP_ROWS, answer_ahead, groups, plan_groups
from pipelines.shard_view import ShardView, iter_views


def transform_shard(
    view: ShardView, stem: str, scorers: dict, pools: dict, methods: list[str], metadata: dict
) -> pa.Table:
    columns: dict = {}
    for name in methods:
        columns.update(catalog.get(name).transform(scorers[name], view.pairs, pools, stem))
    return build_part(view.meta, view.ok, columns, methods, metadata)


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
    neighbour searches of a few shards run together (:mod:`pipelines.search_ahead`)."""
    # no pools: the shard's work is light and reading is the cost, so read two ahead
    views = iter_views(data.cache, todo, data.n_classes, data.memo, ahead=1 if pools else 2)
    sizes = [data.ok_counts[pos] for pos, _ in todo]
    for group in groups(views, plan_groups(sizes, GROUP_ROWS if pools else 0)):
        answered = answer_ahead(group, scorers, pools, methods) if pools else pools
        for stem, view in group:
            meta = {**base_meta, "shard": stem}
            table = transform_shard(view, stem, scorers, answered, methods, meta)
            atomic_write_table(table, layout.part_path(stem))
            on_done(stem)
        del group, answered  # the group's views: memory is one group's
        trim()


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

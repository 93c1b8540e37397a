"""The index stage: the neighbour pools the methods search, built once.

Pools span all shards (SDD's clean set, SPS's reliable images), so they are
built before any part is written, in one streaming pass that adds each
shard's qualifying rows in chunks, and rebuilt identically by a resumed run.
Each pool's recall@1 against exact search is measured on a seeded sample of
queries when the index is approximate, and recorded in the metadata.
"""

from __future__ import annotations

import numpy as np

from cleaner.methods import catalog
from cleaner.methods.neighbors import NeighborIndex
from cleaner.methods.sampling import sample_mask
from pipelines.fit_stage import JobData, log

RECALL_QUERIES = 1000


def describe(pools: dict) -> dict:
    return {name: idx.describe() for name, idx in pools.items()}


def _new_pools(scorers: dict, params: dict, dim: int, settings) -> dict:
    pools, modality = {}, {}
    for method, scorer in scorers.items():
        for name, side in catalog.get(method).pools(scorer).items():
            p = params[method]
            expected = max(1, int(p["pool_fraction"] * p["fit_rows_total"]))
            pools[name] = NeighborIndex(
                dim, exact_threshold=settings.exact_threshold, expected_n=expected,
                seed=settings.seed,
            )  # fmt: skip
            modality[name] = side
    return pools, modality


def build_pools(scorers: dict, params: dict, data: JobData, dim: int, settings) -> dict:
    """pool name -> finalised NeighborIndex, over every shard's qualifying rows."""
    pools, modality = _new_pools(scorers, params, dim, settings)
    if not pools:
        return {}
    total = sum(data.ok_counts)
    queries = []
    for stem, view in data.views("index"):
        p = view.pairs
        if len(p) == 0:
            continue
        for method, scorer in scorers.items():
            rows = catalog.get(method).reference_rows(scorer, p, seed_key=stem)
            for name, (mask, payload) in rows.items():
                if mask.any():
                    vectors = p.image if modality[name] == "image" else p.text
                    extra = {} if payload is None else {"payload": payload[mask]}
                    pools[name].add(vectors[mask], p.row_ids[mask], p.keys[mask], **extra)
        if sum(len(q[0]) for q in queries) < RECALL_QUERIES:
            rate = min(1.0, 2 * RECALL_QUERIES / max(1, total))
            take = sample_mask(len(p), rate, settings.seed, "recall:" + stem)
            queries.append((p.image[take], p.text[take], p.row_ids[take]))
    for name, index in pools.items():
        index.finalize()
        if index.kind != "flat" and queries:
            _log_recall(name, index, queries, modality[name])
    return pools


def _log_recall(name: str, index: NeighborIndex, queries: list, side: str) -> None:
    col = 1 if side == "text" else 0
    q = np.concatenate([r[col] for r in queries])[:RECALL_QUERIES]
    rid = np.concatenate([r[2] for r in queries])[:RECALL_QUERIES]
    recall = index.measure_recall(q, k=1, query_row_ids=rid)
    log(f"{name}: IVF nlist={index.nlist} nprobe={index.nprobe}, recall@1 vs exact = {recall:.4f}")

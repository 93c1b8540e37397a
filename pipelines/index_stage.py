"""The index stage: the neighbour pools the methods search, built once.

Pools span all shards (SDD's clean set, SPS's reliable images), so they are
built before any part is written, and rebuilt identically by a resumed run:

1. one streaming pass offers each shard's qualifying rows (the methods'
   :meth:`~cleaner.methods.registry.Method.reference_rows`) to a
   :class:`~cleaner.methods.pools.PoolSampler` per pool, which keeps a
   seeded uniform sample of at most ``pool_size`` of them by the hash of
   their keys -- ids only, so memory is bounded by the setting; the same
   pass draws the recall-check queries the same way;
2. each pool's vectors are then read from the cache's memory maps and
   indexed (:meth:`NeighborIndex.build`): exact up to ``exact_threshold``
   rows, inverted lists above, with nprobe tuned to recall@1 >=
   :data:`RECALL_TARGET` on half of the check queries and the recall
   measured on the other half.

What each pool holds (qualifying rows, pool size, sampling fraction, kind,
nlist / nprobe, recall) is recorded in the sidecar metadata (``neighbors``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cleaner.methods import catalog
from cleaner.methods.neighbors import NeighborIndex
from cleaner.methods.pools import PoolSampler
from cleaner.methods.sampling import as_uniform, row_hash
from cleaner.methods.threads import set_faiss_threads
from pipelines.fit_stage import JobData, log
from pipelines.shard_view import gather_vectors

RECALL_QUERIES = 1000  # seeded rows: half tune nprobe, half measure recall@1
RECALL_TARGET = 0.95


@dataclass
class PoolSpec:
    method: str
    side: str  # image | text: which vectors the pool stores
    sampler: PoolSampler


def describe(pools: dict) -> dict:
    """pool name -> what the sidecar metadata says about it."""
    return {
        name: {**idx.describe(), **getattr(idx, "pool_info", {})} for name, idx in pools.items()
    }


def _specs(scorers: dict, params: dict, settings) -> dict[str, PoolSpec]:
    specs = {}
    for method, scorer in scorers.items():
        for name, side in catalog.get(method).pools(scorer).items():
            p = params[method]
            expected = max(1, int(p["pool_fraction"] * p["fit_rows_total"]))
            specs[name] = PoolSpec(method, side, PoolSampler(settings.pool_size, expected))
    return specs


def _sample_rows(scorers: dict, specs: dict, data: JobData, seed: int):
    """The streaming pass: every pool's sample, and the recall queries' rows."""
    queries = PoolSampler(RECALL_QUERIES, sum(data.ok_counts))
    for stem, view in data.views("index"):
        p = view.pairs
        if len(p) == 0:
            continue
        where = (view.position, view.ok_positions, p.row_ids, p.keys)
        queries.offer(np.ones(len(p), bool), as_uniform(row_hash(p, seed, "recall")), *where)
        priority = as_uniform(row_hash(p, seed, "pool"))
        for method, scorer in scorers.items():
            rows = catalog.get(method).reference_rows(scorer, p, seed_key=stem)
            for name, (mask, payload) in rows.items():
                specs[name].sampler.offer(mask, priority, *where, payload=payload)
    return queries.result()


def build_pools(scorers: dict, params: dict, data: JobData, dim: int, settings) -> dict:
    """pool name -> finalised NeighborIndex over a bounded sample of every
    shard's qualifying rows."""
    specs = _specs(scorers, params, settings)
    if not specs:
        return {}
    set_faiss_threads()
    q_rows = _sample_rows(scorers, specs, data, settings.seed)
    queries = {}
    pools = {}
    for name, spec in specs.items():
        t0 = time.perf_counter()
        rows = spec.sampler.result()
        vectors = gather_vectors(data.cache, data.stems, rows.shard_pos, rows.row_pos, spec.side)
        index = NeighborIndex.build(
            dim, vectors.reshape(-1, dim), rows.row_ids, rows.keys, rows.payload,
            exact_threshold=settings.exact_threshold, seed=settings.seed,
        )  # fmt: skip
        del vectors
        if index.kind != "flat" and len(q_rows):
            if spec.side not in queries:
                queries[spec.side] = gather_vectors(
                    data.cache, data.stems, q_rows.shard_pos, q_rows.row_pos, spec.side
                )
            index.tune(queries[spec.side], q_rows.row_ids, RECALL_TARGET)
        index.pool_info = spec.sampler.describe(len(rows))
        index.build_seconds = time.perf_counter() - t0  # not in the metadata: runs must agree
        _log_pool(name, index)
        pools[name] = index
    return pools


def _log_pool(name: str, index: NeighborIndex) -> None:
    info = index.pool_info
    kept = f"{index.ntotal:,} of {info['qualifying']:,} qualifying rows"
    if index.kind == "flat":
        log(f"{name}: {kept}, exact search")
        return
    log(
        f"{name}: {kept}, IVF nlist={index.nlist} nprobe={index.nprobe}, "
        f"recall@1 vs exact = {index.recall.get('recall_at_1', float('nan')):.4f}"
    )

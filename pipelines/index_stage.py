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
   rows, inverted lists above, with the probing tuned to recall@1 >=
   :data:`RECALL_TARGET` (plus a margin) on half of the check queries and
   the recall measured on the other half (the probing widened while that
   half falls short); where that needs many lists per query, finer lists
   and PQ fast-scan codes are tuned too and the cheapest kept
   (:func:`tuned`). The check costs one exact search of
   :data:`RECALL_QUERIES` rows per pool -- fixed, whatever the job's size
   (measured at 1M pairs: 2.0 s of 59 s for the three pools); smaller jobs
   check fewer rows (at least :data:`RECALL_MIN`).

What each pool holds (qualifying rows, pool size, sampling fraction, the
search and its probing, recall) is recorded in the sidecar metadata
(``neighbors``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from cleaner.methods import catalog
from cleaner.methods.neighbors import MIN_POINTS_PER_CENTROID, NeighborIndex
from cleaner.methods.neighbors_ivf import scan_cost
from cleaner.methods.neighbors_pq import tune_pq
from cleaner.methods.neighbors_search import normalised
from cleaner.methods.pools import PoolSampler
from cleaner.methods.sampling import as_uniform, row_hash
from cleaner.methods.threads import set_faiss_threads
from pipelines.fit_stage import JobData, log
from pipelines.heap import trim
from pipelines.shard_view import gather_vectors

# seeded rows: half tune nprobe, half measure recall@1 (500 measure it to
# +-0.008 at 0.97); a job of fewer than RECALL_QUERIES * 160 rows checks
# fewer, never under RECALL_MIN (+-0.01): the exact searches cost queries x
# pool rows, 14% of a 100k-row job at 1000 queries
RECALL_QUERIES = 1000
RECALL_MIN = 600
RECALL_TARGET = 0.95
RETUNE_PROBES = 4.0  # more lists per query than this: try finer cells and PQ codes
RETUNE_MIN_ROWS = 16_384  # smaller pools are cheap to search whatever their cells
FINER = 4


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
    total = int(sum(data.ok_counts))
    queries = PoolSampler(min(RECALL_QUERIES, max(RECALL_MIN, total // 160)), total)
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
    trim()  # the fit's temporaries
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
            index = tuned(index, queries[spec.side], q_rows.row_ids)
        index.pool_info = spec.sampler.describe(len(rows))
        index.build_seconds = time.perf_counter() - t0  # not in the metadata: runs must agree
        _log_pool(name, index)
        pools[name] = index
        trim()  # the build's copies
    return pools


def tuned(index: NeighborIndex, queries: np.ndarray, query_rids: np.ndarray) -> NeighborIndex:
    """``index`` with its search tuned to :data:`RECALL_TARGET`. When its
    cells need many lists per query (they do not follow the data), two more
    searches of the same pool are tuned too -- ``FINER`` x as many cells, and
    PQ fast-scan codes re-ranked exactly (:mod:`cleaner.methods.neighbors_pq`)
    -- and the one comparing the fewest vector-equivalents per query is kept
    (a count, not a timing, so a rerun keeps the same)."""
    index.tune(queries, query_rids, RECALL_TARGET)
    probes = index.recall.get("mean_probes", 0.0)
    if index.describe()["gpu"] or probes <= RETUNE_PROBES or index.ntotal < RETUNE_MIN_ROWS:
        return index
    q = normalised(queries, index.dim)
    costs = {f"lists {index.nlist}": scan_cost(index.nlist, probes, index.ntotal)}
    best, best_cost = index, costs[f"lists {index.nlist}"]
    finer = min(FINER * index.nlist, index.ntotal // MIN_POINTS_PER_CENTROID)
    if finer > index.nlist:
        trial = NeighborIndex.build(
            index.dim, index.vectors.copy(), index.row_ids, index.keys, index.payload,
            exact_threshold=index.exact_threshold, nlist=finer, seed=index.seed,
        )  # fmt: skip
        trial.tune(q, query_rids, RECALL_TARGET)
        cost = scan_cost(trial.nlist, trial.recall.get("mean_probes", 0.0), trial.ntotal)
        costs[f"lists {trial.nlist}"] = cost
        if cost < best_cost:
            best, best_cost = trial, cost
    pq, point, recall, cost = tune_pq(best, q, query_rids, RECALL_TARGET)
    costs[pq.key] = cost
    if cost < best_cost:
        best.use_pq(pq, point, recall)
    best.recall["cost_tried"] = {k: round(v) for k, v in costs.items()}
    return best


def _log_pool(name: str, index: NeighborIndex) -> None:
    info = index.pool_info
    kept = f"{index.ntotal:,} of {info['qualifying']:,} qualifying rows"
    if index.kind == "flat":
        log(f"{name}: {kept}, exact search")
        return
    probing = f"nprobe={index.nprobe}"
    if index.describe()["codec"] is not None:
        probing = f"{index.describe()['codec']} nprobe={index.nprobe} k_factor={index.describe()['k_factor']}"
    elif index.describe()["probe_delta"] is not None:
        probing = f"lists within {index.probe_delta:g} of the nearest (<= {index.nprobe})"
    probes = index.recall.get("mean_probes")
    log(
        f"{name}: {kept}, IVF nlist={index.nlist}, {probing}"
        + (f", {probes:.2f} lists per query" if probes is not None else "")
        + f", recall@1 vs exact = {index.recall.get('recall_at_1', float('nan')):.4f}"
    )

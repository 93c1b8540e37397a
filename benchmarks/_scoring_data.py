"""Data and measurements for bench_scoring.py that are not the timed run.

- :func:`write_mixture`: the benchmark's data, ``make_pair_mixture``'s model
  (same cluster centres, cone, noise, 30% mismatched) generated and written
  in chunks of 100k rows, so 3M pairs need ~0.4 GB, not 12 GB.
- :func:`cap_cost`: what bounding the pools costs -- for a seeded sample of
  rows, the similarity of the neighbour the capped run named vs the exact
  nearest row of the *whole* qualifying set.
- :func:`index_choice`: per-query CPU and recall@1 of the search options on
  the job's own SDD pool (exact, faiss IVF-Flat, the grouped IVF search,
  IVF-PQ fast-scan re-ranked).
"""

from __future__ import annotations

import inspect
import math
import time
from pathlib import Path

import numpy as np

CHUNK = 100_000
EXACT_REFERENCE = 2000  # queries whose exact neighbour is computed for recall


# --------------------------------------------------------------------- data
def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _meta(first: int, k: int, stem: str):
    import pyarrow as pa

    return pa.table({
        "key": [f"s{j:09d}" for j in range(first, first + k)],
        "shard": [f"{stem}.tar"] * k,
        "index": np.arange(k, dtype=np.int64),
        "uid": pa.array([None] * k, pa.string()),
        "status": ["ok"] * k,
        "error": pa.array([None] * k, pa.string()),
    })  # fmt: skip


def write_mixture(n: int, seed: int, out: Path, shard_size: int, noise: float, dim: int) -> None:
    """``make_pair_mixture``'s model (its defaults read from its signature),
    written as cache partitions of ``shard_size`` rows; keys ``s%09d`` are
    row numbers and ``is_noisy.npy`` marks the mismatched rows."""
    from cleaner.io.embcache import EmbeddingCache
    from cleaner.worlds.synthetic import make_pair_mixture

    p = {k: v.default for k, v in inspect.signature(make_pair_mixture).parameters.items()}
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(p["n_clusters"], dim)))
    cone = _unit(rng.normal(size=dim)) * p["cone"]
    scale = 1.0 / np.sqrt(dim)
    cache, is_noisy = EmbeddingCache(out / "emb"), np.zeros(n, dtype=bool)
    for c, s in enumerate(range(0, n, CHUNK)):
        r = np.random.default_rng([seed, c])
        m = min(CHUNK, n - s)
        base = centres[r.integers(0, len(centres), m)] + cone
        base += p["spread"] * scale * r.normal(size=(m, dim))
        image = _unit(base + p["modality_noise"] * scale * r.normal(size=(m, dim)))
        text = _unit(base + p["modality_noise"] * scale * r.normal(size=(m, dim)))
        noisy = r.choice(m, size=int(round(noise * m)), replace=False)
        perm = r.permutation(noisy)
        if (perm == noisy).any():
            perm = np.roll(perm, 1)
        text[noisy] = text[perm]  # mismatched: another pair's caption
        is_noisy[s + noisy] = True
        for a in range(0, m, shard_size):
            e, first = min(m, a + shard_size), s + a
            stem = f"{first // shard_size:05d}"
            cache.write(stem, _meta(first, e - a, stem), image[a:e], text[a:e], {"synthetic": True})
    np.save(out / "is_noisy.npy", is_noisy)


def _rows(cache, stems, rows: np.ndarray, which: str, shard_size: int) -> np.ndarray:
    """Normalised float32 vectors of global rows (keys s%09d = row number)."""
    from pipelines.shard_view import gather_vectors

    return gather_vectors(cache, stems, rows // shard_size, rows % shard_size, which)


def _nearest(cache, stems, members, q, qrows, which, shard_size) -> np.ndarray:
    """Exact top-1 similarity of each query among ``members`` (own row excluded)."""
    best = np.full(len(q), -np.inf, dtype=np.float32)
    for s in range(0, len(members), 131_072):
        block = members[s : s + 131_072]
        sims = q @ _rows(cache, stems, block, which, shard_size).T
        sims[qrows[:, None] == block[None, :]] = -np.inf
        best = np.maximum(best, sims.max(axis=1))
    return best


def cap_cost(
    table, cache_root: Path, shard_size: int, n_queries: int = 2000, seed: int = 0
) -> dict:
    """Per neighbour column: mean similarity of the named neighbour (capped
    pool) and of the exact nearest member of the whole qualifying set, and
    the share of rows losing more than 0.02."""
    from cleaner.io.embcache import EmbeddingCache

    cache = EmbeddingCache(cache_root)
    stems = cache.stems()
    rownum = np.array([int(k[1:]) for k in table.column("key").to_pylist()])
    rng = np.random.default_rng(seed)
    clean = table.column("sdd_clean").to_numpy(zero_copy_only=False)
    part = np.asarray(table.column("sps_partition").to_pylist(), dtype=object)
    cols = {
        "sdd_mb_image_key": ("image", clean, None),
        "sdd_mb_text_key": ("text", clean, None),
        "sps_proxy_key": ("image", part == "reliable", part == "noisy"),
    }
    out = {}
    for col, (which, member_mask, query_mask) in cols.items():
        t0 = time.perf_counter()
        named = np.asarray(table.column(col).to_pylist(), dtype=object)
        has = np.array([v is not None for v in named])
        pick = np.flatnonzero(has if query_mask is None else query_mask & has)
        pick = rng.choice(pick, size=min(n_queries, len(pick)), replace=False)
        qrows = rownum[pick]
        q = _rows(cache, stems, qrows, which, shard_size)
        nrows = np.array([int(k[1:]) for k in named[pick]])
        capped = np.einsum("ij,ij->i", q, _rows(cache, stems, nrows, which, shard_size))
        full = _nearest(cache, stems, np.sort(rownum[member_mask]), q, qrows, which, shard_size)
        drop = full - capped
        out[col] = {
            "queries": len(pick), "members": int(member_mask.sum()),
            "mean_capped": float(capped.mean()), "mean_full": float(full.mean()),
            "mean_drop": float(drop.mean()), "share_drop_gt_002": float(np.mean(drop > 0.02)),
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
    return out


# ------------------------------------------------------------- index choice
def _cpu_per_query(fn, q) -> tuple[float, float, object]:
    c, w = time.process_time(), time.perf_counter()
    out = fn(q)
    return (time.process_time() - c) / len(q) * 1e6, (time.perf_counter() - w) / len(q) * 1e6, out


def _pool(table, cache_root: Path, shard_size: int, info: dict, seed: int):
    """The run's own sdd_image pool: the bottom-k of D_c by the key hash."""
    from cleaner.io.embcache import EmbeddingCache
    from cleaner.methods.sampling import key_uniform

    cache = EmbeddingCache(cache_root)
    keys = np.asarray(table.column("key").to_pylist(), dtype=object)
    clean = np.flatnonzero(table.column("sdd_clean").to_numpy(zero_copy_only=False))
    order = np.argsort(key_uniform(keys[clean], seed, "pool"), kind="stable")[: info["pool_size"]]
    members = np.array([int(k[1:]) for k in keys[clean[order]]])
    x = _rows(cache, cache.stems(), members, "image", shard_size)
    return cache, keys, members, x, keys[clean[order]]


def _faiss_ivf_row(x, index, q, qrows, members, truth_sc) -> list:
    """faiss IndexIVFFlat on the same cells, at the smallest nprobe reaching 0.97."""
    import faiss

    quant = faiss.IndexFlatIP(x.shape[1])
    quant.add(index._lists.centroids)
    ivf = faiss.IndexIVFFlat(quant, x.shape[1], index.nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.is_trained = True
    ivf.add(x)
    ref = len(truth_sc)

    def recall(d, i):
        hit = np.where(members[i[:ref, 0]] == qrows[:ref], d[:ref, 1], d[:ref, 0])
        return float(np.mean(hit >= truth_sc - 1e-6))

    for nprobe in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, index.nlist):
        ivf.nprobe = min(nprobe, index.nlist)
        if recall(*ivf.search(q[:ref], 2)) >= 0.97:
            break
    us, wall, (d, i) = _cpu_per_query(lambda qq: ivf.search(qq, 2), q)
    return [
        f"faiss IndexIVFFlat (nlist {index.nlist}, nprobe {ivf.nprobe})",
        us,
        wall,
        recall(d, i),
    ]


def index_choice(
    table, cache_root: Path, shard_size: int, info: dict, n_queries: int, seed: int = 0
):
    """Rows: (search, per-query CPU us, per-query wall us, recall@1) on the
    run's own ``sdd_image`` pool, and the pool and query counts."""
    import faiss

    from cleaner.methods.neighbors import NeighborIndex
    from cleaner.methods.neighbors_pq import tune_pq

    cache, keys, members, x, member_keys = _pool(table, cache_root, shard_size, info, seed)
    qrows = np.sort(np.random.default_rng(seed).choice(len(keys), n_queries, replace=False))
    q = _rows(cache, cache.stems(), qrows, "image", shard_size)
    ref = min(EXACT_REFERENCE, n_queries)
    flat = faiss.IndexFlatIP(x.shape[1])
    flat.add(x)
    us, wall, (d, i) = _cpu_per_query(lambda qq: flat.search(qq, 2), q[:ref])
    truth_sc = np.where(members[i[:, 0]] == qrows[:ref], d[:, 1], d[:, 0])
    rows = [["exact (faiss IndexFlatIP)", us, wall, 1.0]]
    index = NeighborIndex.build(x.shape[1], x.copy(), members, member_keys, exact_threshold=0,
                                seed=seed, nlist=info["nlist"])  # fmt: skip
    rows.append(_faiss_ivf_row(x, index, q, qrows, members, truth_sc))

    def timed_row(label):
        us, wall, _ = _cpu_per_query(lambda qq: index.search(qq, qrows, exact_scores=False), q)
        _, sc, _ = index.search(q[:ref], qrows[:ref])
        return [label, us, wall, float(np.mean(sc[:, 0] >= truth_sc - 1e-6))]

    delta = info.get("probe_delta")
    index.set_nprobe(info["nprobe"], delta or math.inf)
    probing = (
        f"<= {index.nprobe} lists within {delta} of the nearest"
        if delta
        else f"nprobe {index.nprobe}"
    )
    rows.append(timed_row(f"grouped IVF (nclean's; nlist {index.nlist}, {probing})"))
    pq, point, _, _ = tune_pq(index, q[-1000:], qrows[-1000:], 0.95)
    index.use_pq(pq, point, {})
    rows.append(timed_row(f"{pq.key} + exact re-rank (bench_index's pick; tuned nprobe {point[0]}, "
                          f"k_factor {point[1]})"))  # fmt: skip
    return rows, len(x), n_queries

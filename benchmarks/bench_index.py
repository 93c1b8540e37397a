"""Which faiss index for the reference pools: chosen by measurement.

SDD searches its clean set D_c with every row's image and text embedding;
SPS searches its reliable set with the noisy rows. Both are top-1 inner-
product searches over L2-normalised vectors into a *bounded* pool (a seeded
uniform sample of at most ``pool_size`` rows), so at 1M rows the job is
2,000,000 queries (1M by image, 1M by text) into a pool of 2^16-2^18 vectors:
query throughput dominates, with both cores (``faiss.omp_set_num_threads(2)``)
and large query batches.

Every configuration is built with ``faiss.index_factory(d, key,
METRIC_INNER_PRODUCT)`` on the same pool, searched with the same queries, and
compared with exact search (the approach of faiss's ``benchs/bench_all_ivf``:
factory key + ``ParameterSpace`` operating points, 1-recall@1 against brute
force, then the fastest operating point above the recall target):

- ``Flat``: exact (``IndexFlatIP``, BLAS).
- ``IVF{nlist},Flat`` with an nprobe sweep; nlist = 2^ceil(log2 sqrt(n))
  (about sqrt(n)) and 4x that (about 4-6 sqrt(n)), at most n/39.
- ``IVF{nlist},SQ8,RFlat``: 8-bit scalar-quantised lists, the top
  ``k * k_factor_rf`` candidates re-ranked exactly (``IndexRefineFlat``).
- ``IVF{nlist},PQ{d/4}x4fs,RFlat``: 4-bit PQ fast-scan lists, re-ranked.
- ``IVF{nlist},Flat`` searched with ``faiss.contrib.big_batch_search``: the
  queries of a large batch grouped by inverted list and each list compared
  with its queries in one BLAS product (the approach of
  ``cleaner.methods.neighbors_grouped``), nlist = sqrt/2 and sqrt rules.
  Same results as the IVF-Flat search at the same nprobe; its recall is
  measured on the eval queries, its cost on one batch of 32,768 queries.
- ``HNSW32,Flat`` with an efSearch sweep (efConstruction 40, faiss's default).
- ``PCA{d/4},Flat,RFlat``: brute force on a PCA projection, re-ranked.

IVF coarse quantisers are trained once per nlist (faiss's spherical k-means,
10 iterations) on a seeded sample of ``64 * nlist`` pool vectors -- never the
whole pool when it is bigger (faiss subsamples to 256 per centroid anyway;
its own benchmarks train on ~50 per centroid) -- and shared by the IVF
variants of that nlist; each variant still pays the k-means in its build time.

Data: a clustered mixture on the sphere (10,000 anisotropic Gaussian clusters
with lognormal weights, power-law spectrum, a shared "cone" offset), not
uniform random vectors (on which 512-d neighbour search is unrealistically
hard). Queries are fresh draws from the same mixture -- pool-like vectors
that are not pool members, as SDD's rows are for D_c (a row of D_c itself
has its own row excluded, which the k=2 search below covers). The mixture
was calibrated against real sentence embeddings (Flickr8k captions,
all-MiniLM-L6-v2): at equal points per list its IVF recall-vs-nprobe curve
is somewhat *harder* than the real one, so settings picked here have margin.
A table of neighbour statistics (top-1 cosine, local intrinsic dimension,
relative contrast) compares the two. The real embeddings are searched too
when bench_flickr8k.py's cache exists (``benchmarks/_work/flickr8k/``) or
``--real-npy`` names an (n, d) float32 file.

Measured per operating point: build time (train + add; IVF includes its
k-means), memory (serialised index size), search time of one batch of eval
queries (k=2, as ``NeighborIndex`` asks k+1 hits to drop a query's own row),
recall@1 against exact search (a tie with the exact top-1 score counts as a
hit). Times are recorded as wall time and as process CPU time; the machine
may be shared, so the CPU time (all threads) ranks the configurations and
the idle-machine projection is CPU / 2 cores. 2M-query times are
*extrapolated* linearly from the measured per-query cost; the chosen
configurations are then re-timed on a long run (200k queries in 50k batches;
quick: 32k in 16k batches) to confirm the extrapolation.

Selection per pool size: the lowest projected cost of the whole SDD job --
two pools (image and text) built once each plus 2M queries -- among points
with recall@1 >= 0.95 (and the same for >= 0.99). The recall check is
priced as exact search of m sampled queries (m = 1k/2k/5k) against the pool.

    .venv/bin/python benchmarks/bench_index.py [--quick] [--no-write] [--real-npy PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from faiss.contrib.big_batch_search import big_batch_search

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import md_table, write_section  # noqa: E402

HERE = Path(__file__).resolve().parent
FLICKR_CACHE = HERE / "_work" / "flickr8k"

DIM = 512
THREADS = 2
K_SEARCH = 2  # NeighborIndex.search asks k + 1 hits (one may be the query's own row)
RUN_QUERIES = 2_000_000  # SDD at 1M rows: every row by image and by text
N_POOLS = 2  # SDD builds two pools (D_c images, D_c texts); each gets half the queries
TARGET = 0.95
STRONG = 0.99
STOP_AT = 0.995  # a sweep stops once an operating point reaches this recall
TRAIN_PER_CENTROID = 64  # k-means sample = 64 * nlist pool vectors (faiss caps at 256)
MIN_PER_CENTROID = 39  # faiss warns below this
RECALL_CHECK_M = (1000, 2000, 5000)

POOL_SIZES = (2**16, 2**17, 2**18)
QUICK_POOL_SIZES = (2**16,)
N_EVAL, QUICK_N_EVAL = 4000, 2000
GROUPED_BATCH, QUICK_GROUPED_BATCH = 32_768, 16_384  # cost batch of the grouped search
CONFIRM, QUICK_CONFIRM = (200_000, 50_000), (32_768, 16_384)  # (queries, batch)

NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PRUNE = 1.25  # a sweep stops once a point costs 1.25x the best job with recall >= 0.99
EFSEARCH = (16, 32, 64, 128, 256)


# --------------------------------------------------------------------- data
class ClusteredSphere:
    """Mixture of anisotropic Gaussian clusters, projected onto the sphere.

    x = cone * u + centre_k + spread * A z + noise * e / sqrt(d), normalised;
    A has a power-law spectrum (variance of direction i ~ i^-alpha) in a
    random basis, centres are drawn with the same covariance, cluster weights
    are lognormal. Defaults were calibrated on real sentence embeddings (see
    the module docstring).
    """

    def __init__(
        self,
        dim: int = DIM,
        n_clusters: int = 10_000,
        alpha: float = 0.8,
        cone: float = 0.8,
        centre_scale: float = 1.0,
        spread: float = 0.6,
        noise: float = 0.35,
        seed: int = 0,
    ):
        rng = np.random.default_rng(seed)
        self.dim = dim
        basis, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        s = np.arange(1, dim + 1) ** (-alpha / 2)
        s /= np.sqrt((s**2).sum())
        self.A = (basis * s).T.astype(np.float32)
        u = rng.normal(size=dim)
        u /= np.linalg.norm(u)
        self.centres = (
            cone * u + centre_scale * (rng.normal(size=(n_clusters, dim)) @ self.A)
        ).astype(np.float32)
        w = rng.lognormal(0.0, 1.0, size=n_clusters)
        self.weights = w / w.sum()
        self.spread, self.noise = spread, noise

    def sample(self, n: int, seed) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), np.float32)
        for s in range(0, n, 65_536):
            e = min(n, s + 65_536)
            m = e - s
            k = rng.choice(len(self.weights), size=m, p=self.weights)
            x = self.centres[k]
            x += self.spread * (rng.standard_normal((m, self.dim), dtype=np.float32) @ self.A)
            x += (self.noise / math.sqrt(self.dim)) * rng.standard_normal(
                (m, self.dim), dtype=np.float32
            )
            faiss.normalize_L2(x)
            out[s:e] = x
        return out


def find_real(path: str | None) -> tuple[np.ndarray | None, str]:
    """Real embeddings: --real-npy, else bench_flickr8k.py's caption cache."""
    if path:
        x = np.load(path).astype(np.float32)
        return x, f"`{Path(path).name}` ({x.shape[0]:,} x {x.shape[1]})"
    for emb_path in sorted(FLICKR_CACHE.glob("captions_*.npy")):
        if emb_path.name.endswith(".done.npy") or ".tmp" in emb_path.name:
            continue
        mask_path = emb_path.with_name(emb_path.name[: -len(".npy")] + ".done.npy")
        if not mask_path.exists():
            continue
        emb, done = np.load(emb_path), np.load(mask_path)
        if done.sum() >= 2000:
            x = np.ascontiguousarray(emb[done], dtype=np.float32)
            return x, f"bench_flickr8k.py's cache `{emb_path.name}` ({len(x):,} embedded captions)"
    return None, ""


# ------------------------------------------------------------------ helpers
def timed(fn, min_time: float = 0.3, max_reps: int = 3):
    """(result, best wall s, best CPU s): repeats cheap calls up to max_reps."""
    best_w = best_c = math.inf
    t_all = time.perf_counter()
    for _ in range(max_reps):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_w = min(best_w, time.perf_counter() - w0)
        best_c = min(best_c, time.process_time() - c0)
        if time.perf_counter() - t_all >= min_time:
            break
    return out, best_w, best_c


def once(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def recall_at_1(q, pool, gt_d, gt_i, found) -> float:
    """Share of queries whose returned top-1 is the exact top-1 (or ties its score)."""
    got = found[:, 0]
    hit = got == gt_i[:, 0]
    miss = np.flatnonzero(~hit & (got >= 0))
    if len(miss):
        s = np.einsum("ij,ij->i", q[miss], pool[got[miss]])
        hit[miss] = s >= gt_d[miss, 0] - 1e-6
    return float(hit.mean())


def index_mib(index) -> float:
    return len(faiss.serialize_index(index)) / 2**20


def sqrt_base(n: int) -> int:
    """2^ceil(log2 sqrt(n)): the 'sqrt' nlist rule."""
    return 2 ** math.ceil(math.log2(math.sqrt(n)))


def nlists_for(n: int) -> list[int]:
    base = sqrt_base(n)
    return [nl for nl in (base, 4 * base) if nl <= n // MIN_PER_CENTROID]


def grouped_nlists_for(n: int) -> list[int]:
    """Fewer, longer lists for the grouped search: sqrt/2 and sqrt rules."""
    base = sqrt_base(n)
    return [nl for nl in (base // 2, base) if 1 <= nl <= n // MIN_PER_CENTROID]


def nlist_rule(n: int, nlist: int | None) -> str:
    if nlist is None:
        return "-"
    ratio = nlist / sqrt_base(n)
    return {0.5: "sqrt/2", 1.0: "sqrt", 4.0: "4 sqrt"}.get(ratio, f"{ratio:g} sqrt")


def grouped_search(index, q: np.ndarray):
    """faiss.contrib.big_batch_search: queries grouped by inverted list, one
    BLAS product (faiss.knn) per list; its progress prints are swallowed."""
    with contextlib.redirect_stdout(io.StringIO()):
        return big_batch_search(index, q, K_SEARCH, method="knn_function", threaded=1)


def neighbour_stats(pool: np.ndarray, q: np.ndarray, label: str) -> list:
    """Top-1 cosine, local intrinsic dimension (MLE, 20 NN), relative contrast."""
    m = min(1000, len(q))
    flat = faiss.IndexFlatIP(pool.shape[1])
    flat.add(pool)
    d, _ = flat.search(q[:m], 21)
    dist = np.sqrt(np.maximum(2 - 2 * d, 1e-12))
    lid = -1.0 / np.mean(np.log(dist[:, :-1] / dist[:, -1:]), axis=1)
    rng = np.random.default_rng(7)
    rnd = np.einsum("ij,ij->i", q[:m], pool[rng.integers(0, len(pool), m)])
    rc = np.mean(np.sqrt(2 - 2 * rnd)) / np.mean(dist[:, 0])
    return [
        label,
        f"{len(pool):,} x {pool.shape[1]}",
        round(float(np.median(d[:, 0])), 3),
        round(float(np.percentile(d[:, 0], 10)), 3),
        round(float(np.median(d[:, 0] - d[:, 1])), 4),
        round(float(rnd.mean()), 3),
        round(float(np.median(lid)), 1),
        round(float(rc), 2),
    ]


# ------------------------------------------------------------ the sweeps
def family_specs(n: int, dim: int, quick: bool) -> list[dict]:
    """Index families in run order: factory key, nlist, operating points.

    The cheap, strong families run first so that the dominated sweeps after
    them can stop early (see ``PoolBench.run_spec``). Quick mode keeps only
    the larger nlist and fewer re-rank factors.
    """
    nls = nlists_for(n)
    if quick:
        nls = nls[-1:]
    pq_kf = (16, 32) if quick else (16, 32, 64)

    def probes(nl):
        return [p for p in NPROBES if p <= max(1, nl // 4)]

    specs = []
    for nl in reversed(nls):
        specs.append(
            dict(
                family="IVF-PQ fast-scan + re-rank",
                key=f"IVF{nl},PQ{dim // 4}x4fs,RFlat",
                nlist=nl,
                points=[[f"nprobe={p},k_factor_rf={kf}" for p in probes(nl)] for kf in pq_kf],
            )
        )
    for nl in grouped_nlists_for(n)[::-1][: 1 if quick else 2]:
        specs.append(
            dict(
                family="IVF-Flat, grouped BLAS search",
                key=f"IVF{nl},Flat",
                nlist=nl,
                grouped=True,
                points=[[f"nprobe={p}" for p in probes(nl)]],
            )
        )
    specs.append(
        dict(
            family="HNSW",
            key="HNSW32,Flat",
            nlist=None,
            points=[[f"efSearch={e}" for e in EFSEARCH]],
        )
    )
    for nl in reversed(nls):
        specs.append(
            dict(
                family="IVF-SQ8 + re-rank",
                key=f"IVF{nl},SQ8,RFlat",
                nlist=nl,
                points=[[f"nprobe={p},k_factor_rf=2" for p in probes(nl)]],
            )
        )
    for nl in reversed(nls):
        specs.append(
            dict(
                family="IVF-Flat",
                key=f"IVF{nl},Flat",
                nlist=nl,
                points=[[f"nprobe={p}" for p in probes(nl)]],
            )
        )
    specs.append(
        dict(
            family="PCA + flat + re-rank",
            key=f"PCA{dim // 4},Flat,RFlat",
            nlist=None,
            points=[[f"k_factor_rf={kf}"] for kf in (16, 64)],
        )
    )
    return specs


class PoolBench:
    """All configurations on one pool; keeps the indexes of the current winners."""

    def __init__(self, pool: np.ndarray, q: np.ndarray, cost_q: np.ndarray, label: str, seed=0):
        self.pool, self.q, self.cost_q, self.label = pool, q, cost_q, label
        self.n, self.dim = pool.shape
        self.seed = seed
        self.rows: list[dict] = []
        self.centroids: dict[int, tuple[np.ndarray, float, float]] = {}
        self.keep: dict[str, tuple] = {}  # "target"/"strong" -> (row, index)
        self.ps = faiss.ParameterSpace()
        self.ivf_exhaustive: tuple[int, float, float] | None = None
        self.job_long: dict[str, float] = {}  # pick -> projected job s, long-run rate

    # -- exact search: ground truth and the Flat row
    def exact(self) -> None:
        flat = faiss.index_factory(self.dim, "Flat", faiss.METRIC_INNER_PRODUCT)
        _, aw, ac = once(lambda: flat.add(self.pool))
        (d, i), w, c = once(lambda: flat.search(self.q, K_SEARCH))
        self.gt_d, self.gt_i = d, i
        self.exact_q_wall, self.exact_q_cpu = w / len(self.q), c / len(self.q)
        row = self._row(
            "Flat", "Flat", None, "", 0, (aw, ac), index_mib(flat), w, c, 1.0, len(self.q)
        )
        self._consider(row, lambda qq, ix=flat: ix.search(qq, K_SEARCH))
        print(f"  [{self.label}] Flat: {len(self.q) / w:,.0f} q/s", flush=True)

    def train_sample(self, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, size])
        if size >= self.n:
            return self.pool
        return self.pool[np.sort(rng.choice(self.n, size=size, replace=False))]

    def build(self, spec: dict):
        index = faiss.index_factory(self.dim, spec["key"], faiss.METRIC_INNER_PRODUCT)
        nl = spec["nlist"]
        train_w = train_c = 0.0
        n_train = 0
        if nl is not None:
            n_train = min(self.n, TRAIN_PER_CENTROID * nl)
            sample = self.train_sample(n_train)
            ivf = faiss.extract_index_ivf(index)
            if nl in self.centroids:  # k-means already run for this nlist: reuse, but charge it
                cents, km_w, km_c = self.centroids[nl]
                ivf.quantizer.add(cents)
                _, w, c = once(lambda: index.train(sample))  # codec training only
                train_w, train_c = km_w + w, km_c + c
            else:
                ivf.cp.seed = self.seed
                _, train_w, train_c = once(lambda: index.train(sample))
                self.centroids[nl] = (
                    ivf.quantizer.reconstruct_n(0, nl),
                    train_w,
                    train_c,
                )
        elif spec["key"].startswith("PCA"):
            n_train = min(self.n, 65_536)
            sample = self.train_sample(n_train)
            _, train_w, train_c = once(lambda: index.train(sample))
        _, add_w, add_c = once(lambda: index.add(self.pool))
        return index, n_train, (train_w + add_w, train_c + add_c)

    def run_spec(self, spec: dict) -> None:
        index, n_train, build = self.build(spec)
        mib = index_mib(index)
        # Groups differ by re-rank factor, in increasing order: when the first
        # (cheapest) point of a group is already dominated, so are all later groups.
        for group in spec["points"]:
            first_dominated = False
            for j, params in enumerate(group):
                fn = self._searcher(index, params, spec.get("grouped", False))
                if spec.get("grouped"):
                    # recall on the eval batch, cost on one large batch (it needs many queries)
                    _, found = fn(self.q)
                    tq = self.cost_q
                else:
                    tq = self.q
                (_, res), w, c = timed(lambda fn=fn, tq=tq: fn(tq))
                if not spec.get("grouped"):
                    found = res
                rec = recall_at_1(self.q, self.pool, self.gt_d, self.gt_i, found)
                row = self._row(
                    spec["family"],
                    spec["key"],
                    spec["nlist"],
                    params,
                    n_train,
                    build,
                    mib,
                    w,
                    c,
                    rec,
                    len(tq),
                )
                best = self.keep.get("strong")
                self._consider(row, fn)
                print(
                    f"  [{self.label}] {spec['family']} {spec['key']} {params}: recall {rec:.4f}, "
                    f"{len(tq) / w:,.0f} q/s wall, {c / len(tq) * 1e6:.0f} core-us/q",
                    flush=True,
                )
                if rec >= STOP_AT:
                    break
                if best is not None and row["job_idle_s"] > PRUNE * best[0]["job_idle_s"]:
                    row["note"] = "sweep stopped: dominated"
                    first_dominated = j == 0
                    break
                if c / len(tq) > 1.5 * self.exact_q_cpu:
                    row["note"] = "sweep stopped: slower than exact"
                    first_dominated = j == 0
                    break
            if first_dominated:
                break
        if spec["family"] == "IVF-Flat" and spec["nlist"] == nlists_for(self.n)[-1]:
            # exact search through the IVF index itself (nprobe = nlist), as
            # NeighborIndex.measure_recall does today; 256 queries
            index.nprobe = spec["nlist"]
            qs = self.q[:256]
            _, w, c = once(lambda: index.search(qs, K_SEARCH))
            self.ivf_exhaustive = (spec["nlist"], w / len(qs), c / len(qs))

    def _searcher(self, index, params: str, grouped: bool):
        """A search function with this operating point's parameters applied."""
        if grouped:
            nprobe = int(params.split("=")[1])

            def fn(qq):
                index.nprobe = nprobe
                return grouped_search(index, qq)

            return fn
        ps = self.ps

        def fn(qq):
            if params:
                ps.set_index_parameters(index, params)
            return index.search(qq, K_SEARCH)

        return fn

    def _row(self, family, key, nlist, params, n_train, build, mib, w, c, rec, nq) -> dict:
        q_cpu = c / nq
        return dict(
            family=family,
            key=key,
            nlist=nlist,
            rule=nlist_rule(self.n, nlist),
            params=params,
            n_train=n_train,
            build_w=build[0],
            build_c=build[1],
            qps_wall=nq / w,
            q_cpu=q_cpu,
            recall=rec,
            mib=mib,
            # the SDD job: two pools built once each, 2M queries in all (CPU / 2 cores)
            job_idle_s=(N_POOLS * build[1] + RUN_QUERIES * q_cpu) / THREADS,
            search_idle_s=RUN_QUERIES * q_cpu / THREADS,
            search_wall_s=RUN_QUERIES * w / nq,
        )

    def _consider(self, row: dict, search_fn) -> None:
        self.rows.append(row)
        for name, thr in (("target", TARGET), ("strong", STRONG)):
            if row["recall"] < thr:
                continue
            best = self.keep.get(name)
            if best is None or row["job_idle_s"] < best[0]["job_idle_s"]:
                self.keep[name] = (row, search_fn)

    def confirm(self, queries: np.ndarray, batch: int) -> dict:
        """Re-time the chosen configurations on a long run in large batches."""
        out = {}
        for name, (row, fn) in self.keep.items():
            if fn is None:
                continue
            w = c = 0.0
            for s in range(0, len(queries), batch):
                qb = queries[s : s + batch]
                _, bw, bc = once(lambda qb=qb, fn=fn: fn(qb))
                w, c = w + bw, c + bc
            out[name] = dict(row=row, n=len(queries), batch=batch, wall=w, cpu=c)
            print(
                f"  [{self.label}] confirm {name}: {row['key']} {row['params']}: "
                f"{len(queries) / w:,.0f} q/s wall, {c / len(queries) * 1e6:.0f} core-us/q",
                flush=True,
            )
        return out


def run_pool(pool, q, cost_q, label, quick, seed=0):
    b = PoolBench(pool, q, cost_q, label, seed)
    b.exact()
    for spec in family_specs(b.n, b.dim, quick):
        b.run_spec(spec)
    return b


# ------------------------------------------------------------------- report
def fmt_s(x: float) -> str:
    if x >= 3600:
        return f"{x / 3600:.1f} h"
    if x >= 120:
        return f"{x / 60:.1f} min"
    return f"{x:.1f} s"


def point_label(row: dict) -> str:
    p = row["params"]
    return f"`{row['key']}`" + (f" `{p}`" if p else "")


def rows_table(b: PoolBench) -> str:
    picks = {name: id(v[0]) for name, v in b.keep.items()}
    rows = []
    for r in b.rows:
        tags = [f">= {thr} pick" for name, thr in (("target", TARGET), ("strong", STRONG))]
        tags = [
            t
            for t, name in zip(tags, ("target", "strong"), strict=True)
            if picks.get(name) == id(r)
        ]
        mark = " ".join([f"**{t}**" for t in tags] + ([r["note"]] if r.get("note") else []))
        rows.append(
            [
                r["family"],
                f"`{r['key']}`",
                f"`{r['params']}`" if r["params"] else "",
                f"{r['n_train']:,}" if r["n_train"] else "",
                round(r["build_w"], 1),
                round(r["build_c"], 1),
                f"{r['qps_wall']:,.0f}",
                round(r["q_cpu"] * 1e6, 1),
                f"{r['recall']:.4f}",
                round(r["mib"]),
                fmt_s(r["search_idle_s"]),
                fmt_s(r["job_idle_s"]),
                mark,
            ]
        )
    return md_table(
        [
            "family",
            "factory key",
            "search params",
            "train sample",
            "build wall s",
            "build CPU s",
            "q/s (wall)",
            "core-us / query",
            "recall@1",
            "MiB",
            "2M queries (idle, proj.)",
            "SDD job (idle, proj.)",
            "",
        ],
        rows,
    )


def rule_key(b: PoolBench, r: dict) -> tuple:
    """(family, nlist rule, search params) of a row."""
    return (r["family"], r["rule"], r["params"])


def uniform_rule(benches: list[PoolBench], thr: float):
    """Cheapest setting (summed job cost) meeting thr at every pool size, or None."""
    per_key: dict[tuple, list] = {}
    for i, b in enumerate(benches):
        for r in b.rows:
            if r["recall"] >= thr:
                per_key.setdefault(rule_key(b, r), [None] * len(benches))[i] = r
    full = {k: v for k, v in per_key.items() if all(x is not None for x in v)}
    if not full:
        return None
    key = min(full, key=lambda k: sum(r["job_idle_s"] for r in full[k]))
    return key, full[key]


def uniform_section(benches: list[PoolBench], real: PoolBench | None) -> str:
    body = ""
    body += (
        "\nOne setting for every pool size (same family, nlist rule and search parameters; "
        "nlist rule 'sqrt' = 2^ceil(log2 sqrt(n)), 'sqrt/2' and '4 sqrt' = half and 4x that): "
        "the point with the "
        "lowest summed job cost among those measured at every pool size with the recall target "
        "met at each; its recall on the real embeddings (nlist by the same rule) beside it.\n\n"
    )
    urows = []
    for thr in (TARGET, STRONG):
        rule = uniform_rule(benches, thr)
        if rule is None:
            urows.append([f">= {thr}", "none measured at every size", "", "", ""])
            continue
        (family, rule_name, params), per = rule
        key0 = per[0]["key"]
        real_rec = ""
        if real is not None:
            hit = [r for r in real.rows if rule_key(real, r) == (family, rule_name, params)]
            real_rec = f"{hit[0]['recall']:.4f}" if hit else "not measured"
        urows.append(
            [
                f">= {thr}",
                f"{family}, nlist rule '{rule_name}' (`{key0}` at {benches[0].n:,}), `{params}`",
                " / ".join(f"{r['recall']:.4f}" for r in per),
                " / ".join(fmt_s(r["job_idle_s"]) for r in per),
                real_rec,
            ]
        )
    body += md_table(
        [
            "recall target",
            "setting",
            "recall@1 at " + " / ".join(f"{b.n:,}" for b in benches),
            "SDD job (idle, proj., eval-batch rate)",
            "recall@1, real",
        ],
        urows,
    )

    return body


def report(benches, stats_rows, confirms, checks, real, real_desc, args, load) -> str:
    quick = args.quick
    body = ""
    # --- summary first
    body += "### Recommendation (from this run)\n\n"
    body += (
        "Fastest configuration per pool size and recall target, by the projected cost of the "
        f"whole SDD job at 1M rows: {N_POOLS} pools built + {RUN_QUERIES:,} queries, on "
        f"{THREADS} idle cores. The job column uses the per-query cost of the long run "
        "(confirmation, large batches), the eval-batch cost beside it.\n\n"
    )
    picks = []
    for b in benches:
        for name, thr in (("target", TARGET), ("strong", STRONG)):
            if name not in b.keep:
                picks.append([f"{b.n:,}", f">= {thr}", "none reached", "", "", "", "", "", ""])
                continue
            r = b.keep[name][0]
            conf = confirms.get(b.n, {}).get(name)
            q_cpu = conf["cpu"] / conf["n"] if conf else r["q_cpu"]
            job = (N_POOLS * r["build_c"] + RUN_QUERIES * q_cpu) / THREADS
            b.job_long[name] = job
            picks.append(
                [
                    f"{b.n:,}",
                    f">= {thr}",
                    point_label(r),
                    f"{r['recall']:.4f}",
                    round(r["q_cpu"] * 1e6, 1),
                    f"{q_cpu * 1e6:.1f} ({conf['n'] / conf['wall']:,.0f} q/s wall)" if conf else "",
                    round(r["build_c"] / THREADS, 1),
                    fmt_s(RUN_QUERIES * q_cpu / THREADS),
                    fmt_s(job),
                ]
            )
    body += md_table(
        [
            "pool",
            "recall target",
            "fastest configuration",
            "recall@1",
            "core-us / query, eval batch",
            "core-us / query, long run",
            "build s per pool (idle, proj.)",
            "2M queries (idle, proj.)",
            "SDD job (idle, proj.)",
        ],
        picks,
    )
    if len(benches) > 1:
        body += uniform_section(benches, real)
    exact_rows = []
    for b in benches:
        flat = b.rows[0]
        job = b.job_long.get("target")
        exact_rows.append(
            [
                f"{b.n:,}",
                fmt_s(flat["search_idle_s"]),
                fmt_s(job) if job else "",
                f"{flat['search_idle_s'] / job:.0f}x" if job else "",
                round(float(np.median(b.gt_d[:, 0])), 4),
                round(float(np.percentile(b.gt_d[:, 0], 10)), 4),
            ]
        )
    body += (
        "\nExact search versus the >= 0.95 pick for the whole SDD job, and the exact top-1 "
        "cosine of a query into the pool (how much closer the nearest reference gets as the "
        "pool grows: the price of the cap):\n\n"
    )
    body += md_table(
        [
            "pool",
            "exact (Flat), 2M queries",
            ">= 0.95 pick, job",
            "speed-up",
            "median top-1 cosine",
            "p10 top-1 cosine",
        ],
        exact_rows,
    )

    # --- recall check
    body += "\n### Cost of the recall check\n\n"
    body += (
        "Exact search of m sampled queries against the pool (BLAS `IndexFlatIP`, cost per query "
        "measured on the eval batch above) relative to the projected SDD job with the >= 0.95 "
        "pick; standard error of the recall estimate at recall 0.95 = sqrt(0.95 * 0.05 / m). "
        "'via IVF nprobe=nlist' is the same check done as `NeighborIndex.measure_recall` does "
        "it now (scanning every list of the IVF index, no BLAS), measured on 256 queries and "
        "scaled.\n\n"
    )
    crow = []
    for b in benches:
        job = b.job_long.get("target")
        if job is None:
            continue
        ivf = checks.get(b.n)
        for m in RECALL_CHECK_M:
            t = m * b.exact_q_cpu / THREADS
            row = [
                f"{b.n:,}",
                f"{m:,}",
                f"{math.sqrt(0.95 * 0.05 / m):.4f}",
                f"{t:.2f} s",
                f"{100 * t / job:.2f} %",
            ]
            if ivf:
                tv = m * ivf[2] / THREADS
                row += [f"{tv:.1f} s (nlist {ivf[0]})", f"{100 * tv / job:.1f} %"]
            else:
                row += ["", ""]
            crow.append(row)
    body += md_table(
        [
            "pool",
            "m",
            "SE",
            "exact check (idle, proj.)",
            "% of job",
            "via IVF nprobe=nlist",
            "% of job",
        ],
        crow,
    )

    # --- setup
    n_eval = len(benches[0].q)
    conf_n, conf_b = QUICK_CONFIRM if quick else CONFIRM
    body += "\n### Setup\n\n"
    body += (
        f"faiss {faiss.__version__}, {THREADS} threads (`faiss.omp_set_num_threads({THREADS})`); "
        f"this run used {load[2]:,.0f} s of CPU in {load[3]:,.0f} s of wall time; "
        f"load average at start {load[0]}, at end {load[1]} (the machine is shared: wall times "
        "are inflated by other jobs, so configurations are ranked by process CPU time -- all "
        "threads -- and 'idle, proj.' means CPU time / 2 cores). "
        f"Pools: the first n rows of one seeded draw of {max(b.n for b in benches):,} vectors "
        f"({DIM}-d, unit norm) from the clustered mixture (i.i.d. rows, so a prefix is a "
        f"uniform sample); eval queries: {n_eval:,} fresh draws, searched as one batch with "
        f"k = {K_SEARCH}. Recall@1 = share of eval queries whose returned top-1 is the exact "
        "top-1 (or ties its exact score); SE at 0.95 is "
        f"{math.sqrt(0.95 * 0.05 / n_eval):.4f}. "
        f"Training samples: {TRAIN_PER_CENTROID} x nlist pool vectors (all of the pool when "
        "smaller), faiss's spherical k-means, 10 iterations; the k-means is run once per nlist "
        "and its time charged to every IVF row of that nlist. The grouped rows "
        "(`faiss.contrib.big_batch_search`, method `knn_function`, threaded=1) take their recall "
        "from the eval batch and their cost from one batch of "
        f"{(QUICK_GROUPED_BATCH if quick else GROUPED_BATCH):,} queries (the real-data run "
        "repeats its queries to fill it). SQ8 / PQ rows train their codec "
        "on the same sample. 'MiB' is the serialised index size (the re-ranked indexes hold the "
        "full vectors plus the codes). Sweeps stop at the first point with recall >= "
        f"{STOP_AT}, once a point's job costs {PRUNE}x the best job with recall >= {STRONG} found "
        "so far (the rest of that sweep can only be slower), or once a point costs 1.5x exact "
        "search; such rows are marked.\n\n"
        f"Extrapolation: the 2M-query and job columns are the per-query CPU cost on the eval "
        f"batch x {RUN_QUERIES:,} (+ {N_POOLS} builds), / {THREADS} cores. The picks were "
        f"re-timed on {conf_n:,} further queries in batches of {conf_b:,} ('long run' above); "
        "the long-run rate is what a 2M-query run would see per query.\n"
    )
    body += "\nNeighbour statistics of the data (1,000 queries; LID = maximum-likelihood local "
    body += "intrinsic dimension from the 20 nearest neighbours; relative contrast = mean random "
    body += (
        "distance / mean top-1 distance; uniform random vectors give LID ~150 and contrast ~1.1 "
    )
    body += "at 512-d):\n\n"
    body += md_table(
        [
            "data",
            "pool",
            "median top-1 cos",
            "p10 top-1 cos",
            "median top-1 minus top-2",
            "mean random cos",
            "LID",
            "relative contrast",
        ],
        stats_rows,
    )

    # --- all rows
    for b in benches:
        body += f"\n### Pool {b.n:,} x {b.dim} (synthetic)\n\n" + rows_table(b)
    if real is not None:
        body += f"\n### Real embeddings: {real_desc}\n\n"
        if args.real_label:
            body += args.real_label.rstrip(".") + ".\n\n"
        body += (
            f"Pool: a seeded random 3/4 of the vectors ({real.n:,}); queries: the other "
            f"{len(real.q):,}. Same sweeps (nlist capped at n/{MIN_PER_CENTROID}).\n\n"
        )
        body += rows_table(real)
    elif args.quick or args.no_real:
        body += "\nReal embeddings: not run (full run only, or `--real-npy` with `--quick`).\n"
    else:
        body += (
            "\nReal embeddings: not run (no caption cache under `benchmarks/_work/flickr8k/`; "
            "run `bench_flickr8k.py` first, or pass `--real-npy`).\n"
        )
    return body


# --------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"pool {QUICK_POOL_SIZES} only, fewer queries and sweeps, no real-data run",
    )
    ap.add_argument("--pool-sizes", default=None, help="comma-separated pool sizes (override)")
    ap.add_argument("--real-npy", default=None, help="(n, d) float32 .npy of real embeddings")
    ap.add_argument("--real-label", default="", help="what the --real-npy vectors are")
    ap.add_argument("--no-real", action="store_true", help="skip the real-embedding run")
    ap.add_argument(
        "--no-write", action="store_true", help="print only; do not write the results section"
    )
    args = ap.parse_args()
    started = time.time()
    cpu0 = time.process_time()
    faiss.omp_set_num_threads(THREADS)
    load0 = round(os.getloadavg()[0], 1)

    sizes = QUICK_POOL_SIZES if args.quick else POOL_SIZES
    if args.pool_sizes:
        sizes = tuple(sorted(int(v) for v in args.pool_sizes.split(",")))
    n_eval = QUICK_N_EVAL if args.quick else N_EVAL
    conf_n, conf_b = QUICK_CONFIRM if args.quick else CONFIRM
    grouped_batch = QUICK_GROUPED_BATCH if args.quick else GROUPED_BATCH

    gen = ClusteredSphere()
    t0 = time.time()
    pool_all = gen.sample(max(sizes), seed=1)
    q_eval = gen.sample(n_eval, seed=2)
    q_conf = gen.sample(conf_n, seed=3)
    print(f"data: {time.time() - t0:.1f} s", flush=True)

    stats_rows = []
    benches, confirms, checks = [], {}, {}
    for n in sizes:
        pool = pool_all[:n]
        stats_rows.append(neighbour_stats(pool, q_eval, "synthetic mixture"))
        b = run_pool(pool, q_eval, q_conf[:grouped_batch], f"{n}", args.quick)
        confirms[n] = b.confirm(q_conf, conf_b)
        checks[n] = b.ivf_exhaustive
        b.keep = {k: (v[0], None) for k, v in b.keep.items()}  # free the indexes
        benches.append(b)

    real, real_desc = None, ""
    if not (args.no_real or (args.quick and not args.real_npy)):
        x, real_desc = find_real(args.real_npy)
        if x is not None:
            faiss.normalize_L2(x)
            rng = np.random.default_rng(0)
            perm = rng.permutation(len(x))
            n_pool = (3 * len(x)) // 4
            rp, rq = x[np.sort(perm[:n_pool])], x[perm[n_pool:]][:n_eval]
            stats_rows.append(neighbour_stats(rp, rq, "real (" + real_desc.split(" (")[0] + ")"))
            sub = gen.sample(n_pool, seed=4)  # the mixture at the same pool size, for comparison
            stats_rows.append(neighbour_stats(sub, q_eval, "synthetic mixture"))
            reps = -(-grouped_batch // len(rq))
            real = run_pool(rp, rq, np.tile(rq, (reps, 1))[:grouped_batch], "real", args.quick)
            real.keep = {k: (v[0], None) for k, v in real.keep.items()}

    load = (load0, round(os.getloadavg()[0], 1), time.process_time() - cpu0, time.time() - started)
    body = report(benches, stats_rows, confirms, checks, real, real_desc, args, load)
    print(body)
    if not args.no_write:
        cmd = "python benchmarks/bench_index.py" + (
            "" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:])
        )
        path = write_section(
            "index", "Neighbour index for the reference pools (faiss)", body, started, cmd
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

"""Recall@1 and search time of the IVF index against nprobe (prints only).

The measurement behind ``cleaner.methods.neighbors.default_nprobe``: 100k clustered
512-d vectors (the synthetic CLIP-like mixture) as the pool, 5k queries,
recall against exact search. Run: ``python benchmarks/nprobe_sweep.py``.
Measured 2026-11-29 (2 cores, under load): nlist 1265; nprobe 72 -> 1.0
recall, 5.97 s; 36 -> 0.9998, 3.08 s; 18 -> 0.987, 1.57 s; 8 -> 0.755.
"""

import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cleaner.methods.neighbors import NeighborIndex  # noqa: E402
from cleaner.worlds.synthetic import make_pair_mixture  # noqa: E402

img, _, _ = make_pair_mixture(105_000, dim=512, seed=0)
pool, q = img[:100_000], img[100_000:]
ix = NeighborIndex(512, exact_threshold=1000, expected_n=100_000)
t = time.time()
ix.add(pool, np.arange(100_000), np.array([str(i) for i in range(100_000)], object))
ix.finalize()
print("build", round(time.time() - t, 1), "s; nlist", ix.nlist, "default nprobe", ix.nprobe)
flat = faiss.IndexFlatIP(512)
flat.add(pool)
t = time.time()
_, exact = flat.search(q, 1)
print("exact search", round(time.time() - t, 2), "s")
for nprobe in sorted({2 * ix.nprobe, ix.nprobe, max(1, ix.nprobe // 2), 8}, reverse=True):
    ix.set_nprobe(nprobe)
    t = time.time()
    _, _, rids = ix.search(q, np.arange(100_000, 105_000))
    print(
        f"nprobe {nprobe}: {time.time() - t:.2f} s, recall@1 {(rids[:, 0] == exact[:, 0]).mean():.4f}"
    )

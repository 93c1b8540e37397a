"""match's fit collects its candidate rows during the job's shared fit pass
(a streaming bottom-k by seeded hash, ids only): exactly the rows a full read
would give, in any order of shards and rows, with memory bounded by the
sizes; the fit then reads the chosen rows' vectors by row id."""

from __future__ import annotations

import numpy as np

from cleaner.methods.match.method import Candidates
from cleaner.methods.match.pool import SALT_FIT, SALT_POOL, smallest_hash

SETTINGS = {"seed": 3, "pool_size": 300, "fit_size": 500}


def _offer_all(ids, row_ids, chunks):
    cand = Candidates(SETTINGS)
    peak = 0
    for part in chunks:
        cand.offer(ids[part], row_ids[part])
        peak = max(peak, cand.size)
    return cand.result(), peak


def test_bottom_k_in_any_order():
    rng = np.random.default_rng(0)
    n = 12_000
    ids = rng.choice(10**12, size=n, replace=False).astype(np.int64)
    row_ids = rng.choice(10**9, size=n, replace=False).astype(np.int64)
    want = set(ids[smallest_hash(ids, 3, SALT_POOL, 300)]) | set(
        ids[smallest_hash(ids, 3, SALT_FIT, 500)]
    )
    results = []
    for seed in (1, 2):
        order = np.random.default_rng(seed).permutation(n)
        (got, got_rows), peak = _offer_all(ids, row_ids, np.array_split(order, 37))
        assert set(got.tolist()) == want
        # each kept id keeps its own row id
        pos = {int(r): i for i, r in enumerate(ids)}
        idx = np.array([pos[int(r)] for r in got])
        np.testing.assert_array_equal(got_rows, row_ids[idx])
        # bounded: never much more than the rows it must keep plus one chunk
        assert peak <= Candidates.PRUNE * 800 + n / 37 + 1
        results.append(set(got.tolist()))
    assert results[0] == results[1]


def test_fewer_rows_than_wanted_keeps_all():
    ids = np.arange(50, dtype=np.int64)
    (got, _), _ = _offer_all(ids, ids + 7, [np.arange(20), np.arange(20, 50)])
    assert sorted(got.tolist()) == list(range(50))
    empty = Candidates(SETTINGS).result()
    assert len(empty[0]) == 0 and len(empty[1]) == 0

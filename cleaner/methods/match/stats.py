"""Per-row statistics against the pool, and the pair scores built from them.

Every score here is ``f(cos(x, y), side(x), side(y))``: what is computed
against the pool depends on one side of the pair only. That is what makes
the method linear in n *and* lets the fit score thousands of shuffled pairs
(x_i, y_j) -- the noise model -- for the price of a dot product each.

Side statistics (:func:`side_stats`) of a query vector q against the pool's
other modality:

- ``top_val``: the k+1 largest cosines with the pool side, in the search's
  projection (:class:`.search.PoolSearch`), and ``proj``: the query's own
  projected vector (to recognise a pair's candidate among them), for CSLS;
- ``lse``: per negCLIPLoss batch b, ``log sum_{p in b} exp(cos(q, v_p) / tau)``.

Candidate exclusion. A pair (x, y) is compared with the pool *minus its own
candidate*: CSLS drops y from x's neighbours (and x from y's) when it is a
pool member, negCLIPLoss counts y once in x's batch normaliser whether or
not y is a member (the paper's "batch containing the pair"). Without it a
clean pool member would be its own nearest neighbour and be penalised, and
shuffled pairs would not follow the same rule as real ones. CSLS's search
returns values only, so a member candidate is recognised by its value: the
pair's projected cosine (equal up to float rounding, :data:`_SAME`).
"""

from __future__ import annotations

import numpy as np

from cleaner.methods.match.search import PoolSearch

SCORES = ("csls", "negclip", "cosine")
# Two projected cosines this close are the same pool row (float32 products
# of the same vectors summed in another order differ by ~1e-6).
_SAME = 5e-5
# Rows per block when forming (rows x pool) similarity matrices: bounds the
# temporary to block * pool floats (64 MiB at a pool of 2**16).
_BLOCK_ELEMS = 1 << 24


def side_stats(
    query: np.ndarray,
    pool_vecs: np.ndarray,
    score: str,
    k: int,
    batch_starts: np.ndarray,
    temperature: float,
    index: PoolSearch | None = None,
) -> dict[str, np.ndarray]:
    """Statistics of ``query`` rows against the pool vectors of the other side
    (CSLS searches ``index``; exact when none is given)."""
    query = np.ascontiguousarray(query, dtype=np.float32)
    out: dict[str, np.ndarray] = {}
    if score == "csls":
        kk = min(k + 1, len(pool_vecs))
        index = index if index is not None else PoolSearch(pool_vecs, None, 1, 1, 0)
        out["proj"] = index.project(query)
        out["top_val"] = index.top_values(out["proj"], kk)
    elif score == "negclip":
        out["lse"] = _batch_lse(query, pool_vecs, batch_starts, temperature)
    return out


def _batch_lse(
    query: np.ndarray, pool_vecs: np.ndarray, starts: np.ndarray, temperature: float
) -> np.ndarray:
    """(n, n_batches) log-sum-exp of cos / temperature over each pool batch."""
    n, p = len(query), len(pool_vecs)
    out = np.empty((n, len(starts)), dtype=np.float64)
    step = max(1, _BLOCK_ELEMS // max(p, 1))
    inv_t = np.float32(1.0 / temperature)
    for s in range(0, n, step):
        z = query[s : s + step] @ pool_vecs.T
        z *= inv_t
        # shift by each batch's max so exp never overflows, even at small tau
        zmax = np.maximum.reduceat(z, starts, axis=1)
        counts = np.diff(np.r_[starts, p])
        z -= np.repeat(zmax, counts, axis=1)
        np.exp(z, out=z)
        out[s : s + step] = np.log(np.add.reduceat(z, starts, axis=1)) + zmax
    return out


def _csls_side(top_val: np.ndarray, cand_val: np.ndarray, member: np.ndarray, k: int):
    """Mean of the k largest pool cosines, the candidate excluded if among
    them (a member whose value is in the list; the first such entry)."""
    kk = top_val.shape[1]
    k = min(k, kk)
    hit = member[:, None] & (np.abs(top_val - cand_val[:, None]) <= _SAME)
    first = hit & (np.cumsum(hit, axis=1) == 1)
    has = first.any(axis=1)
    vals = np.where(np.isfinite(top_val), top_val, 0.0).astype(np.float64)
    total = np.where(first, 0.0, vals).sum(axis=1)
    # without the candidate among the k+1, drop the (k+1)-th instead
    if kk > k:
        total -= np.where(has, 0.0, vals[:, k])
        return total / k
    finite = np.isfinite(top_val).sum(axis=1)  # the pool is smaller than k+1
    return total / np.maximum(finite - has, 1)


def _negclip_side(lse: np.ndarray, cos: np.ndarray, cand_batch: np.ndarray, t: float):
    """Mean over batches of the normaliser with the candidate counted once."""
    with_cand = np.logaddexp(lse, (cos / t)[:, None])
    inside = np.arange(lse.shape[1])[None, :] == cand_batch[:, None]
    return np.where(inside, lse, with_cand).mean(axis=1)


def pair_scores(
    score: str,
    cos: np.ndarray,
    img_stats: dict[str, np.ndarray],
    txt_stats: dict[str, np.ndarray],
    cand_text: np.ndarray,
    cand_image: np.ndarray,
    k: int,
    temperature: float,
    batch_of: np.ndarray,
) -> np.ndarray:
    """Scores of pairs (image a, text b) from the side statistics of a and b.

    ``cand_text``: pool position of text b's row (-1 if not a member), which
    image a's statistics must not count as a neighbour; ``cand_image`` the
    same for image a in text b's statistics. ``cos``: cos(x_a, y_b).
    """
    cos = np.asarray(cos, dtype=np.float64)
    if score == "cosine":
        return cos
    if score == "csls":
        pcos = np.einsum("ij,ij->i", img_stats["proj"], txt_stats["proj"])
        r_text = _csls_side(img_stats["top_val"], pcos, cand_text >= 0, k)
        r_image = _csls_side(txt_stats["top_val"], pcos, cand_image >= 0, k)
        return 2.0 * cos - r_text - r_image
    if score == "negclip":
        bt = np.where(cand_text >= 0, batch_of[np.maximum(cand_text, 0)], -1)
        bi = np.where(cand_image >= 0, batch_of[np.maximum(cand_image, 0)], -1)
        norm_t = _negclip_side(img_stats["lse"], cos, bt, temperature)
        norm_i = _negclip_side(txt_stats["lse"], cos, bi, temperature)
        return cos - 0.5 * temperature * (norm_t + norm_i)
    raise ValueError(f"score must be one of {SCORES}, got {score!r}")

"""Seeded row samples that do not depend on how the job is cut into passes.

Every fit draws its rows shard by shard with a generator seeded by the job's
seed and a digest of a key naming the shard (and the purpose), so the same
rows are drawn whether a job runs once or resumes, locally or on Ray.
"""

from __future__ import annotations

import hashlib

import numpy as np


def sample_mask(n: int, rate: float, seed: int, key: str) -> np.ndarray:
    """A seeded Bernoulli(rate) mask over ``n`` rows, reproducible per ``key``."""
    if rate >= 1.0:
        return np.ones(n, dtype=bool)
    digest = int.from_bytes(hashlib.sha256(f"fit-sample:{key}".encode()).digest()[:8], "little")
    rng = np.random.default_rng([seed, digest])
    return rng.random(n) < rate

"""Synthetic paired embeddings with known structure (tests and benchmarks).

Pairs live around ``n_clusters`` topic centres, so nearest neighbours are
meaningful; a matched pair's text is its image plus noise, a mismatched pair
takes the text of a random pair from another cluster. Written in the
embedding-cache layout (one partition per "shard"), they go straight into
``nclean score --embeddings``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def make_pair_mixture(
    n: int,
    dim: int = 512,
    noise_fraction: float = 0.3,
    n_clusters: int = 64,
    spread: float = 0.7,
    modality_noise: float = 2.3,
    cone: float = 0.8,
    seed: int = 0,
    dtype=np.float32,
):
    """Return (image, text, is_noisy): unit rows, float32 by default.

    Each pair shares a point ``centre + spread * N(0, I/dim)``; image and
    text add their own noise of norm ~``modality_noise`` and a shared offset
    ``cone`` along one direction (the "cone effect" lifting every cosine, as
    in real CLIP spaces). The defaults give CLIP-like cosines: matched
    around 0.3, mismatched around 0.1, so SDD's logit thresholds (20, 30)
    fall where they do on real data.
    """
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(n_clusters, dim)))
    cone_dir = _unit(rng.normal(size=dim)) * cone
    cluster = rng.integers(0, n_clusters, size=n)
    image = np.empty((n, dim), dtype=dtype)
    text = np.empty((n, dim), dtype=dtype)
    step = 100_000  # bounded temporaries for millions of rows
    for s in range(0, n, step):
        e = min(n, s + step)
        scale = 1.0 / np.sqrt(dim)
        base = centres[cluster[s:e]] + spread * scale * rng.normal(size=(e - s, dim)) + cone_dir
        image[s:e] = _unit(base + modality_noise * scale * rng.normal(size=(e - s, dim)))
        text[s:e] = _unit(base + modality_noise * scale * rng.normal(size=(e - s, dim)))
    is_noisy = np.zeros(n, dtype=bool)
    noisy = rng.choice(n, size=int(round(noise_fraction * n)), replace=False)
    is_noisy[noisy] = True
    # mismatched: the text of a random other pair (a derangement over the noisy rows)
    perm = rng.permutation(noisy)
    clash = perm == noisy
    if clash.any():
        perm = np.roll(perm, 1)
    text[noisy] = text[perm]
    return image, text, is_noisy


def write_embedding_dir(
    root: str | Path,
    image: np.ndarray,
    text: np.ndarray,
    shard_size: int,
    key_prefix: str = "s",
    keys: list[str] | None = None,
) -> list[str]:
    """Write rows as nclean-style cache partitions ``00000``, ``00001``, ...
    (``keys``: the samples' keys, default ``<key_prefix><row number>``)."""
    from cleaner.io.embcache import EmbeddingCache

    cache = EmbeddingCache(root)
    stems = []
    for i, s in enumerate(range(0, len(image), shard_size)):
        e = min(len(image), s + shard_size)
        stem = f"{i:05d}"
        n = e - s
        meta = pa.table(
            {
                "key": list(keys[s:e])
                if keys is not None
                else [f"{key_prefix}{j:09d}" for j in range(s, e)],
                "shard": [f"{stem}.tar"] * n,
                "index": np.arange(n, dtype=np.int64),
                "uid": pa.array([None] * n, pa.string()),
                "status": ["ok"] * n,
                "error": pa.array([None] * n, pa.string()),
            }
        )
        cache.write(stem, meta, image[s:e], text[s:e], info={"synthetic": True})
        stems.append(stem)
    return stems

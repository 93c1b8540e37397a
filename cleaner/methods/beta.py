"""OSA's spatial-debiasing constant beta (METHODS.md section 1, step 1).

Two constructions of "K random pairs":

- ``noise`` (default, as in the authors' released code): K uniform-noise
  images (values in [0, 1], fed to the image tower without normalisation)
  and K random token sequences (ids 0-99, no start/end tokens), scored over
  all K x K cross pairs. Needs the model.
- ``shuffled``: K real mismatched pairs -- the image of one random sample
  with the caption of another -- drawn uniformly over all shards (seeded).
  Needs only embeddings; its mean is the centre of the *noisy* distribution,
  so it is expected to sit lower than ``noise``.

Standard errors: for ``shuffled`` the K pairs are drawn *without reuse*:
no image row and no caption row appears in two pairs, so the K cosines are
independent and se = std / sqrt(K). That caps K at the number of scorable
rows n (K = min(K asked, n); the K used is what ``BetaEstimate.k``
records). Drawing 10,000 pairs from 201 rows with replacement would reuse
every image and caption ~50 times and report a standard error ~7x too
small. When 2K <= n the pairs' images and captions come from disjoint rows;
above that they form one chain (image of row r_t with the caption of row
r_t+1), each row used once as image and once as caption. For ``noise`` the
K x K cross pairs share images and texts; the grand mean of such a two-way
layout has variance about var(row means) / K + var(column means) / K, which
is what we report.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_NOISE_K = 64  # ViT-B-32 on 2 CPU cores: ~3 s for 64 images + 64 texts
DEFAULT_SHUFFLED_K = 10_000


@dataclass
class BetaEstimate:
    value: float  # cosine units
    std: float  # spread of the individual pair cosines
    se: float  # standard error of ``value``
    k: int  # K: images (noise) or pairs (shuffled)
    n_pairs: int  # cosines averaged: K*K for noise, K for shuffled
    source: str  # noise | shuffled | manual
    seed: int | None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def manual(cls, value: float) -> BetaEstimate:
        return cls(value=float(value), std=0.0, se=0.0, k=0, n_pairs=0, source="manual", seed=None)


def noise_beta(
    estimator, k: int = DEFAULT_NOISE_K, seed: int = 0, batch_size: int = 64
) -> BetaEstimate:
    """beta from K noise images x K random token sequences (released code)."""
    import torch  # here: the other betas (shuffled, manual) need no torch

    with torch.inference_mode():
        return _noise_beta(torch, estimator, k, seed, batch_size)


def _noise_beta(torch, estimator, k: int, seed: int, batch_size: int) -> BetaEstimate:
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(k, 3, estimator.image_size, estimator.image_size, generator=gen)
    tokens = torch.randint(0, 100, (k, estimator.context_length), generator=gen)
    img = torch.cat(
        [estimator.encode_images(images[i : i + batch_size]) for i in range(0, k, batch_size)]
    )
    txt = torch.cat(
        [estimator.encode_text(tokens[i : i + batch_size]) for i in range(0, k, batch_size)]
    )
    cos = (img @ txt.T).double().cpu().numpy()  # (K, K) cross pairs
    return _grid_estimate(cos, source="noise", seed=seed)


def _grid_estimate(cos: np.ndarray, source: str, seed: int | None) -> BetaEstimate:
    k = cos.shape[0]
    var_rows = cos.mean(axis=1).var(ddof=1) if k > 1 else 0.0
    var_cols = cos.mean(axis=0).var(ddof=1) if k > 1 else 0.0
    return BetaEstimate(
        value=float(cos.mean()),
        std=float(cos.std(ddof=1)) if cos.size > 1 else 0.0,
        se=float(np.sqrt(var_rows / k + var_cols / k)),
        k=k,
        n_pairs=int(cos.size),
        source=source,
        seed=seed,
    )


def sample_mismatched_indices(
    sizes: Sequence[int], k: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Up to K (image_row, text_row) global index pairs with image_row !=
    text_row, uniform over the concatenation of blocks of the given sizes,
    no image row and no text row used twice (so the pairs are independent).

    Returns min(K, total) pairs: with fewer rows than K there are not K
    independent mismatched pairs to be had.
    """
    total = int(np.sum(sizes))
    if total < 2:
        raise ValueError("shuffled beta needs at least two scorable samples")
    if k < 1:
        raise ValueError("K must be at least 1")
    m = min(int(k), total)
    rng = np.random.default_rng(seed)
    # distinct rows in random order (Floyd's algorithm for small m: no O(total) memory)
    rows = rng.choice(total, size=min(total, 2 * m), replace=False)
    i = rows[:m]
    if len(rows) == 2 * m:  # disjoint image and caption rows
        j = rows[m:]
    else:  # a chain: row t's image with row t+1's caption (wrapping when m == total)
        j = rows[(np.arange(m) + 1) % len(rows)]
    return i, j


def shuffled_beta_from_rows(
    image_rows: np.ndarray, text_rows: np.ndarray, seed: int
) -> BetaEstimate:
    """beta from already gathered mismatched pairs (row i of each)."""
    cos = np.einsum("ij,ij->i", image_rows.astype(np.float64), text_rows.astype(np.float64))
    k = len(cos)
    std = float(cos.std(ddof=1)) if k > 1 else 0.0
    return BetaEstimate(
        value=float(cos.mean()),
        std=std,
        se=std / np.sqrt(k) if k else 0.0,
        k=k,
        n_pairs=k,
        source="shuffled",
        seed=seed,
    )


def shuffled_beta(
    image: np.ndarray, text: np.ndarray, k: int = DEFAULT_SHUFFLED_K, seed: int = 0
) -> BetaEstimate:
    """In-memory version: ``image``/``text`` are the ok rows' embeddings.
    Uses min(k, len(image)) pairs (see :func:`sample_mismatched_indices`)."""
    i, j = sample_mismatched_indices([len(image)], k, seed)
    return shuffled_beta_from_rows(image[i], text[j], seed)

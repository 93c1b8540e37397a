"""SPS's proxy points for noisy pairs: the nearest reliable image and its label.

A noisy pair borrows the caption of the reliable pair whose image is nearest
to its own (self excluded), with a proxy label from the image similarity and,
in the released ``'code'`` form, the reliable pair's own match probability
(stored as the index payload). This is the scorer's only use of the
neighbour index, so it is kept apart from the loss and GMM code of
:mod:`cleaner.methods.sps.scorer`; the label forms are described there.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from cleaner.methods.base import Pairs
from cleaner.methods.neighbors import NeighborIndex


def proxy_labels(
    similarity: np.ndarray,
    match_prob: np.ndarray,
    form: Literal["code", "paper"],
    gamma: float,
    b: float,
) -> np.ndarray:
    """float32 label of each (noisy image, borrowed caption) proxy pair."""
    s = similarity.astype(np.float64)
    if form == "paper":
        return (1.0 / (gamma + np.exp(-b * s))).astype(np.float32)
    label = match_prob.astype(np.float64) * s
    # Released rule: a weak proxy (product below 0.5) is no positive.
    label[label < 0.5] = 0.0
    return label.astype(np.float32)


def nearest_proxies(
    pairs: Pairs,
    noisy: np.ndarray,
    image_index: NeighborIndex | None,
    form: Literal["code", "paper"],
    gamma: float,
    b: float,
) -> tuple[np.ndarray, np.ndarray]:
    """``sps_proxy_key`` and ``sps_proxy_label`` of a block of pairs.

    ``noisy`` holds the positions of the block's noisy rows; every other row,
    and every noisy row without a neighbour, gets key None and label NaN.
    """
    n = len(pairs)
    proxy_key = np.full(n, None, dtype=object)
    proxy_label = np.full(n, np.nan, dtype=np.float32)
    if image_index is None or image_index.ntotal == 0 or not len(noisy):
        return proxy_key, proxy_label
    keys, sims, rids = image_index.search(pairs.image[noisy], pairs.row_ids[noisy], k=1)
    keys, sims, rids = keys[:, 0], sims[:, 0], rids[:, 0]
    found = rids >= 0
    if form == "code":
        if image_index.payload is None:
            raise ValueError(
                "proxy_label='code' needs the reliable index built with "
                "payload=match_prob (see SPSScorer.reference_rows)"
            )
        match_prob = image_index.payload_for(rids[found])
    else:
        match_prob = np.ones(int(found.sum()), dtype=np.float32)
    proxy_key[noisy[found]] = keys[found]
    proxy_label[noisy[found]] = proxy_labels(sims[found], match_prob, form, gamma, b)
    return proxy_key, proxy_label

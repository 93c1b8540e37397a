"""Verdicts for map-style datasets: a kept-index list and a weighted sampler.

:func:`keep_indices` gives the dataset indices to keep (for
``torch.utils.data.Subset``) and :class:`WeightedSampler` draws indices in
proportion to a weight; both take, per dataset index, the sample's key,
``(shard, key)`` pair or uid, and find its row with the vectorised lookups of
:class:`~cleaner.train.verdicts.Verdicts`.

A module of its own because map-style datasets join by index, not by
stream: it shares nothing with the webdataset stages but the verdicts.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from cleaner.train.verdicts import Verdicts


def _rows_for(verdicts: Verdicts, keys, uids, on_missing: str) -> np.ndarray:
    """Rows for dataset items given by uid, by key, or by (shard, key) pairs."""
    if (keys is None) == (uids is None):
        raise ValueError("give exactly one of keys= (keys or (shard, key) pairs) or uids=")
    if uids is not None:
        return verdicts.lookup_uids(uids, on_missing)
    if isinstance(keys, (pa.Array, pa.ChunkedArray)):
        return verdicts.lookup_keys(keys, on_missing)
    items = list(keys)
    if items and not isinstance(items[0], str):
        try:
            shards, names = zip(*items, strict=True)
        except (TypeError, ValueError):
            raise ValueError("keys must be strings or (shard, key) pairs") from None
        return verdicts.lookup(list(shards), list(names), on_missing)
    return verdicts.lookup_keys(items, on_missing)


def keep_indices(
    verdicts: Verdicts,
    expr: str | None,
    *,
    keys=None,
    uids=None,
    on_missing: str = "error",
    keep_failed: bool = False,
) -> np.ndarray:
    """Dataset indices to keep, for ``torch.utils.data.Subset(dataset, indices)``.

    Parameters
    ----------
    verdicts : Verdicts
    expr : a true/false expression (``None`` keeps every ok row).
    keys : per dataset index, the sample's key (keys unique across shards)
        or its (shard, key) pair.
    uids : per dataset index, the sample's uid (instead of keys).
    on_missing : ``"error"`` raises :class:`SidecarMismatchError`;
        ``"drop"``/``"zero"`` leave items without a row out.
    keep_failed : see :meth:`Verdicts.mask`.

    Returns
    -------
    numpy.ndarray of int64, sorted.
    """
    rows = _rows_for(verdicts, keys, uids, on_missing)
    mask = verdicts.mask(expr, keep_failed=keep_failed)
    found = rows >= 0
    keep = np.zeros(len(rows), dtype=bool)
    keep[found] = mask[rows[found]]
    return np.flatnonzero(keep).astype(np.int64)


try:  # torch is a dependency of nclean, but the weights API should import without it
    from torch.utils.data import Sampler as _SamplerBase
except ImportError:  # pragma: no cover
    _SamplerBase = object


class WeightedSampler(_SamplerBase):
    """Sample dataset indices with replacement, in proportion to a weight.

    For map-style datasets: pass, per dataset index, the sample's key (when
    keys are unique across shards), its (shard, key) pair, or its uid.

    Parameters
    ----------
    verdicts : Verdicts
    weights : a column or expression giving a non-negative number (or
        true/false, as 1/0) per sample, e.g. ``osa_weight_norm``.
    keys, uids : see :func:`keep_indices`; give exactly one.
    num_samples : indices per epoch [default: the dataset's length].
    replacement : draw with replacement (default). Without replacement,
        ``num_samples`` may not exceed the number of positive weights.
    seed : the draws of epoch ``e`` come from ``numpy.random.default_rng([seed, e])``,
        so a run is reproducible and each epoch differs. The epoch advances by
        one after each full iteration, or is set with :meth:`set_epoch`.
    on_missing : ``"error"`` raises :class:`SidecarMismatchError`;
        ``"zero"``/``"drop"`` give items without a row weight 0 (never drawn).
    keep_failed : see :meth:`Verdicts.weights`.

    Raises
    ------
    ValueError
        if a weight is negative or not finite, or all weights are zero.
    """

    def __init__(
        self,
        verdicts: Verdicts,
        weights: str,
        *,
        keys=None,
        uids=None,
        num_samples: int | None = None,
        replacement: bool = True,
        seed: int = 0,
        on_missing: str = "error",
        keep_failed: bool = False,
    ):
        super().__init__()
        rows = _rows_for(verdicts, keys, uids, on_missing)
        per_row = verdicts.weights(weights, keep_failed=keep_failed)
        w = np.zeros(len(rows), dtype=np.float64)
        found = rows >= 0
        w[found] = per_row[rows[found]]
        if not np.all(np.isfinite(w)) or (w < 0).any():
            bad = int((~np.isfinite(w) | (w < 0)).sum())
            raise ValueError(f"weights {weights!r}: {bad} values are negative or not finite")
        positive = int((w > 0).sum())
        if positive == 0:
            raise ValueError(f"weights {weights!r}: every sample weighs 0")
        self.weights = w
        self.num_samples = len(w) if num_samples is None else int(num_samples)
        if self.num_samples < 0:
            raise ValueError("num_samples must be >= 0")
        if not replacement and self.num_samples > positive:
            raise ValueError(
                f"cannot draw {self.num_samples} without replacement from {positive} positive weights"
            )
        self.replacement = replacement
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        p = self.weights / self.weights.sum()
        drawn = rng.choice(len(p), size=self.num_samples, replace=self.replacement, p=p)
        self.epoch += 1
        yield from drawn.tolist()

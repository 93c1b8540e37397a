"""Training shards decoded into memory: :class:`Split` and :func:`load_split`.

The thin trainer holds its (small) training set in memory, decoded at the
model's input size, because SDD's memory bank and SPS's proxies need random
access to *other* samples by key. Decoding reuses the embedding stage's
decoder, so a sample the scorer could not use is not trained on either.

A module of its own because the pair loop, the classifier and the
pretraining script all read shards this way, with no training logic.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cleaner.errors import InputError
from cleaner.estimator.embed import iter_prepared
from cleaner.io.decode import SampleSpec
from cleaner.io.shards import expand_shards


@dataclass
class Split:
    """Decoded samples held in memory, in shard order."""

    shards: np.ndarray  # object: shard file name
    keys: np.ndarray  # object
    images: torch.Tensor  # uint8 (n, H, W, 3)
    tokens: torch.Tensor  # int64 (n, L)
    labels: np.ndarray  # int64, -1 where missing
    skipped: dict[str, int] = field(default_factory=dict)
    uids: np.ndarray | None = None  # object, when the spec reads a uid field

    def __len__(self) -> int:
        return len(self.keys)


def load_split(
    shard_specs: list[str], est, spec: SampleSpec, workers: int, batch_size: int = 256
) -> Split:
    """Decode every scorable sample of the shards (bad ones are counted, not
    kept: a trainer cannot use them). Uses the embedding stage's decoder."""
    paths = expand_shards(shard_specs)
    shards, keys, imgs, toks, labels, uids = [], [], [], [], [], []
    skipped: dict[str, int] = {}
    for batch in iter_prepared(paths, spec, est, batch_size, workers):
        if batch.fatal:
            raise InputError(batch.fatal)
        ok = [r for r in batch.rows if r.status == "ok"]
        for r in batch.rows:
            if r.status != "ok":
                skipped[r.status] = skipped.get(r.status, 0) + 1
        name = paths[batch.shard_pos].name
        shards += [name] * len(ok)
        keys += [r.key for r in ok]
        uids += [r.uid for r in ok]
        labels += [(-1 if r.label is None else r.label) for r in ok]
        if ok:
            imgs.append(batch.images)
            toks.append(batch.tokens)
    if not keys:
        raise InputError(f"no usable sample in {', '.join(shard_specs)}")
    return Split(
        shards=np.array(shards, dtype=object),
        keys=np.array(keys, dtype=object),
        images=torch.cat(imgs),
        tokens=torch.cat(toks),
        labels=np.array(labels, dtype=np.int64),
        skipped=skipped,
        uids=np.array(uids, dtype=object) if spec.uid_field else None,
    )

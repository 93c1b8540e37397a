"""What every scorer shares: the input it sees and the contract it keeps.

A scorer follows scikit-learn's split between *fitting* global statistics and
*transforming* rows, so that the pipeline can fit once (on all rows, or on a
seeded sample when the data is huge) and then transform every shard on its
own:

    scorer = SomeScorer(**settings).fit(sample_pairs)     # global statistics
    params = scorer.get_params()                          # JSON-able, stored
    scorer = SomeScorer.from_params(params)               # on resume
    columns = scorer.transform(shard_pairs)               # dict name -> array

Scorers never read or write files; the pipeline does the I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


@dataclass
class Pairs:
    """A block of image-text pairs as the estimator sees them.

    ``image`` and ``text`` are (n, d) float32 arrays of L2-normalised
    embeddings, row i of one matching row i of the other. ``keys`` are the
    sample keys (strings) used to name neighbours in the sidecar;
    ``row_ids`` are int64 ids unique over the whole job (used to exclude a
    sample from its own neighbour search). ``labels`` is optional (class
    labels for CLIPCleaner).
    """

    image: np.ndarray
    text: np.ndarray
    keys: np.ndarray | None = None
    row_ids: np.ndarray | None = None
    labels: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.image = np.ascontiguousarray(self.image, dtype=np.float32)
        self.text = np.ascontiguousarray(self.text, dtype=np.float32)
        if self.image.shape != self.text.shape:
            raise ValueError(
                f"image and text embeddings differ in shape: {self.image.shape} vs {self.text.shape}"
            )
        n = len(self.image)
        if self.keys is None:
            self.keys = np.array([str(i) for i in range(n)], dtype=object)
        if self.row_ids is None:
            self.row_ids = np.arange(n, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.image)

    @cached_property
    def cosine(self) -> np.ndarray:
        """Row-wise cosine similarity s(x_i, y_i), float32 in [-1, 1]."""
        return np.einsum("ij,ij->i", self.image, self.text).astype(np.float32)

    def subset(self, mask_or_index) -> Pairs:
        sel = np.asarray(mask_or_index)
        return Pairs(
            image=self.image[sel],
            text=self.text[sel],
            keys=None if self.keys is None else self.keys[sel],
            row_ids=None if self.row_ids is None else self.row_ids[sel],
            labels=None if self.labels is None else self.labels[sel],
        )


def pair_cosines(image: np.ndarray, text: np.ndarray, shift: int = 0) -> np.ndarray:
    """cos(image[i], text[(i + shift) % n]) in float64 (float32 rows, products
    summed in float64), by slices -- no copy of the rows -- on two threads
    (the cast-and-sum holds one core for 0.6 s per 1M rows). A row's value
    does not depend on how the rows are cut."""
    from cleaner.methods.threads import parallel_map

    n = len(image)
    shift %= max(n, 1)
    cuts = [(a, b) for a, b in ((0, n - shift), (n - shift, n)) if b > a]
    if n >= 4096:  # each contiguous run in two
        cuts = [c for a, b in cuts for c in ((a, (a + b) // 2), ((a + b) // 2, b))]

    def run(cut: tuple[int, int]) -> np.ndarray:
        a, b = cut
        t0 = (a + shift) % n
        return np.einsum("ij,ij->i", image[a:b], text[t0 : t0 + b - a], dtype=np.float64)

    return np.concatenate(parallel_map(run, cuts, workers=2)) if n else np.zeros(0)

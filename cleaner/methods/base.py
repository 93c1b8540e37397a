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

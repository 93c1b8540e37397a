"""SDD -- self-drop and dual-weight (METHODS.md section 2), offline part.

What can be computed once with a frozen estimator:

- ``sdd_keep``: self-drop, keep the pair if ``100 * s > alpha``;
- ``sdd_w_con``: confidence weight, the posterior of the higher-mean
  component of a two-component GMM fitted on ``100 * s`` of all pairs,
  min-max normalised;
- ``sdd_clean``: membership of the clean set D_c, ``100 * s > beta_c``;
- ``sdd_mb_image_key`` / ``sdd_mb_text_key``: the memory bank, the D_c pair
  whose image (resp. text) is most similar to this pair's image (text).

The significance weight ``w_sig`` needs the model being trained and is left
to the trainer.

The pipeline uses the scorer in three passes::

    scorer = SDDScorer().fit(all_or_sample_pairs)
    for shard in shards:                         # build the memory bank
        m = scorer.reference_mask(shard)
        image_index.add(shard.image[m], shard.row_ids[m], shard.keys[m])
        text_index.add(shard.text[m], shard.row_ids[m], shard.keys[m])
    for shard in shards:
        columns = scorer.transform(shard, image_index, text_index)
"""

from __future__ import annotations

import numpy as np

from cleaner.methods.base import Pairs
from cleaner.methods.gmm import (
    RELEASED_MAX_ITER,
    RELEASED_REG_COVAR,
    RELEASED_TOL,
    fit_gmm_1d,
    gmm_posterior,
)
from cleaner.methods.neighbors import NeighborIndex

# CLIP's logit scale: SDD's thresholds and GMM live on 100 * cosine.
LOGIT_SCALE = 100.0


def _nearest_keys(index: NeighborIndex | None, vectors: np.ndarray, row_ids: np.ndarray):
    """Key of the nearest indexed row (self excluded), None where there is none."""
    if index is None or index.ntotal == 0:
        return np.full(len(vectors), None, dtype=object)
    keys, _, _ = index.search(vectors, row_ids, k=1, exact_scores=False)  # keys only
    return keys[:, 0]


class SDDScorer:
    """Offline SDD verdicts: self-drop, confidence weight and memory bank.

    Parameters
    ----------
    alpha : float, default=20.0
        Self-drop threshold on ``100 * cosine``: pairs at or below it are
        dropped (``sdd_keep`` False).
    beta_c : float, default=30.0
        Clean-set threshold on ``100 * cosine``: pairs above it form D_c,
        the pool the memory bank is drawn from.
    random_state : int, default=0
        Seed of the GMM's k-means initialisation.

    Notes
    -----
    - ``fit`` sees all pairs or a seeded sample. On a sample, the min and
      max of the posterior used for the min-max normalisation of
      ``w_con`` are the sample's, so ``w_con`` on other rows is clipped to
      [0, 1]; likewise ``100 * s`` is clipped to the fitted range before the
      posterior is evaluated, so that rows beyond the sample's extremes get
      the posterior of the nearest fitted extreme instead of a Gaussian tail
      extrapolation (which can flip components when their variances differ).
      When fitted on all rows both clips are no-ops.
    - The released code does not exclude a pair from its own memory-bank
      search (a clean pair is its own nearest neighbour); we exclude it.
    """

    name = "sdd"

    def __init__(self, alpha: float = 20.0, beta_c: float = 30.0, random_state: int = 0) -> None:
        self.alpha = float(alpha)
        self.beta_c = float(beta_c)
        self.random_state = int(random_state)
        self.gmm_: dict | None = None
        self.posterior_min_: float | None = None
        self.posterior_max_: float | None = None
        self.logit_min_: float | None = None
        self.logit_max_: float | None = None

    # ---------------------------------------------------------------- fitting

    @staticmethod
    def logits(pairs: Pairs) -> np.ndarray:
        """``100 * s`` per pair, float64."""
        return LOGIT_SCALE * pairs.cosine.astype(np.float64)

    def fit(self, pairs: Pairs | np.ndarray) -> SDDScorer:
        """Fit the confidence-weight GMM on ``100 * s`` of the given pairs.

        Parameters
        ----------
        pairs : Pairs or np.ndarray
            All pairs of the dataset (dropped ones included, as SDD does), or
            a seeded sample of them, at least 2 rows; or just their cosines
            (the fit needs nothing else, which keeps a web-scale fit sample
            to one float per row).

        Returns
        -------
        self : SDDScorer
        """
        if isinstance(pairs, Pairs):
            x = self.logits(pairs)
        else:
            x = LOGIT_SCALE * np.asarray(pairs, dtype=np.float64).reshape(-1)
        self.gmm_ = fit_gmm_1d(
            x,
            max_iter=RELEASED_MAX_ITER,
            tol=RELEASED_TOL,
            reg_covar=RELEASED_REG_COVAR,
            random_state=self.random_state,
        )
        post = gmm_posterior(x, self.gmm_, "high").astype(np.float64)
        self.posterior_min_ = float(post.min())
        self.posterior_max_ = float(post.max())
        self.logit_min_ = float(x.min())
        self.logit_max_ = float(x.max())
        return self

    def _check_fitted(self) -> None:
        if self.gmm_ is None:
            raise RuntimeError("SDDScorer is not fitted; call fit() or from_params()")

    def get_params(self) -> dict:
        """JSON-able settings and fitted statistics (for the sidecar / resume)."""
        self._check_fitted()
        return {
            "method": self.name,
            "alpha": self.alpha,
            "beta_c": self.beta_c,
            "random_state": self.random_state,
            "scale": LOGIT_SCALE,
            "gmm": self.gmm_,
            "posterior_min": self.posterior_min_,
            "posterior_max": self.posterior_max_,
            "logit_min": self.logit_min_,
            "logit_max": self.logit_max_,
        }

    @classmethod
    def from_params(cls, params: dict) -> SDDScorer:
        """Rebuild a fitted scorer from :meth:`get_params` output."""
        scorer = cls(
            alpha=params["alpha"], beta_c=params["beta_c"], random_state=params["random_state"]
        )
        scorer.gmm_ = params["gmm"]
        scorer.posterior_min_ = params["posterior_min"]
        scorer.posterior_max_ = params["posterior_max"]
        scorer.logit_min_ = params["logit_min"]
        scorer.logit_max_ = params["logit_max"]
        return scorer

    # ------------------------------------------------------------- transform

    def reference_mask(self, pairs: Pairs) -> np.ndarray:
        """Rows in the clean set D_c (``100 * s > beta_c``): the memory-bank pool.

        Needs no fitting. Returns a bool array of length ``len(pairs)``.
        """
        return self.logits(pairs) > self.beta_c

    def confidence_weight(self, pairs: Pairs) -> np.ndarray:
        """``w_con``: min-max normalised high-component posterior, float32 in [0, 1]."""
        self._check_fitted()
        x = np.clip(self.logits(pairs), self.logit_min_, self.logit_max_)
        post = gmm_posterior(x, self.gmm_, "high").astype(np.float64)
        span = self.posterior_max_ - self.posterior_min_
        if span <= 0:
            # All fitted posteriors equal: the normalisation is undefined
            # (the released code would divide by zero); keep the posterior.
            return post.astype(np.float32)
        return np.clip((post - self.posterior_min_) / span, 0.0, 1.0).astype(np.float32)

    def transform(
        self,
        pairs: Pairs,
        image_index: NeighborIndex | None = None,
        text_index: NeighborIndex | None = None,
    ) -> dict[str, np.ndarray]:
        """SDD sidecar columns for a block of pairs.

        Parameters
        ----------
        pairs : Pairs
            The rows to score (typically one shard).
        image_index : NeighborIndex or None, default=None
            Image embeddings of all D_c rows of the job (see
            :meth:`reference_mask`). ``None`` or empty gives ``None`` keys.
        text_index : NeighborIndex or None, default=None
            Text embeddings of the same D_c rows.

        Returns
        -------
        columns : dict[str, np.ndarray]
            One array per sidecar column, each of length ``len(pairs)``:

            - ``sdd_keep`` (bool): ``100 * s > alpha``;
            - ``sdd_w_con`` (float32): confidence weight in [0, 1];
            - ``sdd_clean`` (bool): ``100 * s > beta_c``;
            - ``sdd_mb_image_key`` (object, str or None): key of the D_c
              pair with the most similar image, the pair itself excluded;
            - ``sdd_mb_text_key`` (object, str or None): same by text.
        """
        logits = self.logits(pairs)
        return {
            "sdd_keep": logits > self.alpha,
            "sdd_w_con": self.confidence_weight(pairs),
            "sdd_clean": logits > self.beta_c,
            "sdd_mb_image_key": _nearest_keys(image_index, pairs.image, pairs.row_ids),
            "sdd_mb_text_key": _nearest_keys(text_index, pairs.text, pairs.row_ids),
        }

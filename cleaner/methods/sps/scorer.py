"""SPS -- proxy points in a stable feature space (METHODS.md section 4), offline part.

What can be computed once with a frozen estimator:

- ``sps_loss``: per-sample symmetric InfoNCE loss ``CE(i2t) + CE(t2i)``
  (temperature 0.07) within seeded shuffled batches;
- ``sps_clean_prob``: posterior of the low-loss component of a two-component
  GMM on the min-max normalised losses;
- ``sps_partition``: ``'reliable'`` (p > eps1), ``'quasi'``
  (eps2 < p <= eps1) or ``'noisy'`` (p <= eps2, plus the 1% forcing rule);
- ``sps_proxy_key`` / ``sps_proxy_label``: for noisy pairs, the reliable
  pair whose image is nearest to the noisy image and the label of the
  proxy pair (noisy image, borrowed caption);
- ``sps_soft_label``: for quasi-clean pairs, ``p + (1 - p) * y_hat``.

The pipeline uses the scorer in three passes::

    scorer = SPSScorer().fit(sample_pairs, seed_key="fit")
    for shard in shards:                         # reliable images + payload
        mask, match_prob = scorer.reference_rows(shard, seed_key=shard_name)
        index.add(shard.image[mask], shard.row_ids[mask], shard.keys[mask],
                  payload=match_prob[mask])
    for shard in shards:
        columns = scorer.transform(shard, index, seed_key=shard_name)

The same ``seed_key`` must be used for a shard in both passes, so that its
loss batches -- and hence its losses and partition -- are the same.

Offline definitions (the released code computes these during training)
----------------------------------------------------------------------
- Loss batches are formed within the rows given (one shard), from a
  permutation seeded by ``(seed, seed_key)`` -- or, with ``batch_by='key'``
  (what the pipeline uses), from the order of a seeded hash of each row's
  sample key, so a sample gets the same batch mates whatever order its
  shard lists the rows in: a shard's losses depend neither on other shards
  nor on the order of its own rows. The last batch may be shorter than ``batch_size``; it has
  fewer negatives, so its losses are slightly lower (the released loader
  has the same short tail). A 1-row tail would have loss 0, so it is
  merged into the previous batch; a block of a single row gets loss 0 and
  y_hat 1.
- *Predicted match probability* (``'code'`` proxy label): the released
  code multiplies the network's ``predict`` output -- the mean of the i2t
  and t2i softmax diagonals, ``y_hat`` -- by the image-image cosine and
  zeroes products below 0.5. Offline, ``y_hat`` is evaluated on the
  reliable pair whose caption is borrowed, in its own loss batch: the
  estimator's confidence that the proxy caption is a correct caption at
  all. The pipeline stores it as the reliable index's payload
  (:meth:`SPSScorer.reference_rows`).
- ``'paper'`` proxy label: ``1 / (gamma + exp(-b * S))``. The paper gives
  no values; ``gamma = 1`` makes it a logistic in ``S``, and ``b = 5`` is
  our choice (label 0.73 at S = 0.2, 0.98 at S = 0.8).
"""

from __future__ import annotations

from typing import Literal

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
from cleaner.methods.sps.inbatch import batch_stats, loss_batches
from cleaner.methods.sps.proxies import nearest_proxies

__all__ = ["NOISY", "QUASI", "RELIABLE", "SPSScorer", "loss_batches"]

RELIABLE, QUASI, NOISY = "reliable", "quasi", "noisy"


class SPSScorer:
    """Offline SPS verdicts: clean probability, partition, proxies, soft labels.

    Parameters
    ----------
    batch_size : int, default=128
        Size of the loss batches (released setting).
    temperature : float, default=0.07
        InfoNCE temperature (released setting).
    eps1 : float, default=0.99
        Reliable if ``p > eps1`` (the paper's best; the code uses 0.6).
    eps2 : float, default=0.5
        Noisy if ``p <= eps2``; quasi-clean in between.
    proxy_label : {'code', 'paper'}, default='code'
        How the proxy label of a noisy pair is computed (see module doc).
    gamma : float, default=1.0
        ``gamma`` of the paper's proxy label ``1 / (gamma + exp(-b * S))``.
    b : float, default=5.0
        ``b`` of the paper's proxy label (no published value; our choice).
    seed : int, default=0
        Seeds the loss batches (together with each call's ``seed_key``) and
        the GMM initialisation.
    batch_by : {'position', 'key'}, default='position'
        Cut loss batches from a seeded permutation of the rows' positions,
        or from the seeded hash order of their keys (order-independent).

    Notes
    -----
    - ``fit`` may see all rows or a seeded sample. The loss min and max of
      the min-max normalisation are the fit set's; at transform the
      normalised loss is clipped to [0, 1] so that rows outside the fitted
      range get the posterior of the nearest fitted extreme (no-op when fit
      on all rows).
    - 1% forcing rule: if every fitted ``p`` exceeds ``eps2``, the released
      code marks ``p <= sort(p)[n // 100]`` as noisy. That threshold is
      stored and applied to every shard.
    - The partition is exclusive and noisy wins: the released code can
      put a forced-noisy row in its strictly-clean set too.
    """

    name = "sps"

    def __init__(
        self,
        batch_size: int = 128,
        temperature: float = 0.07,
        eps1: float = 0.99,
        eps2: float = 0.5,
        proxy_label: Literal["code", "paper"] = "code",
        gamma: float = 1.0,
        b: float = 5.0,
        seed: int = 0,
        batch_by: Literal["position", "key"] = "position",
    ) -> None:
        if batch_size < 2:
            raise ValueError("batch_size must be at least 2 (InfoNCE needs negatives)")
        if proxy_label not in ("code", "paper"):
            raise ValueError(f"proxy_label must be 'code' or 'paper', got {proxy_label!r}")
        if batch_by not in ("position", "key"):
            raise ValueError(f"batch_by must be 'position' or 'key', got {batch_by!r}")
        if not 0.0 <= eps2 <= eps1 <= 1.0:
            raise ValueError(f"need 0 <= eps2 <= eps1 <= 1, got eps1={eps1}, eps2={eps2}")
        self.batch_size = int(batch_size)
        self.temperature = float(temperature)
        self.eps1 = float(eps1)
        self.eps2 = float(eps2)
        self.proxy_label = proxy_label
        self.gamma = float(gamma)
        self.b = float(b)
        self.seed = int(seed)
        self.batch_by = batch_by
        self.gmm_: dict | None = None
        self.loss_min_: float | None = None
        self.loss_max_: float | None = None
        self.forced_noisy_threshold_: float | None = None

    # ------------------------------------------------------------ the losses

    def batch_stats(self, pairs: Pairs, seed_key: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Per-sample loss and y_hat of each pair within its loss batch.

        Parameters
        ----------
        pairs : Pairs
            The rows to batch (typically one shard).
        seed_key : str, default=''
            Identifies the block (e.g. the shard name); with ``seed`` it
            fixes the shuffle, so a block's values are reproducible alone.

        Returns
        -------
        loss : np.ndarray
            float32 ``CE(i2t) + CE(t2i)`` per row.
        y_hat : np.ndarray
            float32 mean of the row's i2t and t2i softmax diagonals, in [0, 1].
        """
        return batch_stats(
            pairs, self.batch_size, self.temperature, self.seed, seed_key, self.batch_by == "key"
        )

    def per_sample_loss(self, pairs: Pairs, seed_key: str = "") -> np.ndarray:
        """``L_i = CE(i2t) + CE(t2i)`` per pair, float32 (see :meth:`batch_stats`)."""
        return self.batch_stats(pairs, seed_key)[0]

    # --------------------------------------------------------------- fitting

    def fit(self, pairs_or_losses: Pairs | np.ndarray, seed_key: str = "") -> SPSScorer:
        """Fit the loss normalisation, the GMM and the forcing rule.

        Parameters
        ----------
        pairs_or_losses : Pairs or np.ndarray
            The fit set (all rows or a seeded sample) as pairs, whose losses
            are computed with ``seed_key``; or its precomputed losses
            (e.g. the concatenated ``sps_loss`` of sampled shards).
        seed_key : str, default=''
            Batch seed key used when ``pairs_or_losses`` is a Pairs.

        Returns
        -------
        self : SPSScorer

        Notes
        -----
        When fitting on a sample drawn from several shards, prefer passing
        the losses of the sampled rows computed shard by shard
        (:meth:`per_sample_loss` with each shard's ``seed_key``): those are
        exactly the values :meth:`transform` will see. Passing the sampled
        rows as one Pairs re-batches them across shards instead (same
        distribution, different values).
        """
        if isinstance(pairs_or_losses, Pairs):
            losses = self.per_sample_loss(pairs_or_losses, seed_key).astype(np.float64)
        else:
            losses = np.asarray(pairs_or_losses, dtype=np.float64).reshape(-1)
        self.loss_min_ = float(losses.min())
        self.loss_max_ = float(losses.max())
        norm = self._normalise(losses)
        self.gmm_ = fit_gmm_1d(
            norm,
            max_iter=RELEASED_MAX_ITER,
            tol=RELEASED_TOL,
            reg_covar=RELEASED_REG_COVAR,
            random_state=self.seed,
        )
        p = gmm_posterior(norm, self.gmm_, "low")
        if p.min() > self.eps2:
            # Released rule: nobody looks noisy, so the lowest ~1% are.
            self.forced_noisy_threshold_ = float(np.sort(p)[len(p) // 100])
        else:
            self.forced_noisy_threshold_ = None
        return self

    def _normalise(self, losses: np.ndarray) -> np.ndarray:
        span = self.loss_max_ - self.loss_min_
        if span <= 0:
            return np.zeros(len(losses), dtype=np.float64)
        return np.clip((np.asarray(losses, np.float64) - self.loss_min_) / span, 0.0, 1.0)

    def _check_fitted(self) -> None:
        if self.gmm_ is None:
            raise RuntimeError("SPSScorer is not fitted; call fit() or from_params()")

    def get_params(self) -> dict:
        """JSON-able settings and fitted statistics (for the sidecar / resume)."""
        self._check_fitted()
        return {
            "method": self.name,
            "batch_size": self.batch_size,
            "temperature": self.temperature,
            "eps1": self.eps1,
            "eps2": self.eps2,
            "proxy_label": self.proxy_label,
            "gamma": self.gamma,
            "b": self.b,
            "seed": self.seed,
            "batch_by": self.batch_by,
            "gmm": self.gmm_,
            "loss_min": self.loss_min_,
            "loss_max": self.loss_max_,
            "forced_noisy_threshold": self.forced_noisy_threshold_,
        }

    @classmethod
    def from_params(cls, params: dict) -> SPSScorer:
        """Rebuild a fitted scorer from :meth:`get_params` output."""
        scorer = cls(
            batch_size=params["batch_size"],
            temperature=params["temperature"],
            eps1=params["eps1"],
            eps2=params["eps2"],
            proxy_label=params["proxy_label"],
            gamma=params["gamma"],
            b=params["b"],
            seed=params["seed"],
            batch_by=params.get("batch_by", "position"),  # fits stored before it existed
        )
        scorer.gmm_ = params["gmm"]
        scorer.loss_min_ = params["loss_min"]
        scorer.loss_max_ = params["loss_max"]
        scorer.forced_noisy_threshold_ = params["forced_noisy_threshold"]
        return scorer

    # ------------------------------------------------------------- transform

    def clean_prob(self, losses: np.ndarray) -> np.ndarray:
        """``p``: low-loss-component posterior of raw losses, float32."""
        self._check_fitted()
        return gmm_posterior(self._normalise(losses), self.gmm_, "low")

    def partition(self, p: np.ndarray) -> np.ndarray:
        """Object array of 'reliable' / 'quasi' / 'noisy' from clean probabilities."""
        p = np.asarray(p, dtype=np.float64)
        noisy = p <= self.eps2
        if self.forced_noisy_threshold_ is not None:
            noisy |= p <= self.forced_noisy_threshold_
        out = np.full(len(p), QUASI, dtype=object)
        out[p > self.eps1] = RELIABLE
        out[noisy] = NOISY  # noisy wins over reliable (forcing rule)
        return out

    def reference_rows(self, pairs: Pairs, seed_key: str = "") -> tuple[np.ndarray, np.ndarray]:
        """Reliable rows and the payload the proxy index needs.

        Parameters
        ----------
        pairs : Pairs
            One block of rows (typically a shard).
        seed_key : str, default=''
            The block's batch seed key; use the same one in :meth:`transform`.

        Returns
        -------
        mask : np.ndarray
            bool, True for reliable rows (the proxy pool).
        match_prob : np.ndarray
            float32 y_hat of every row in its loss batch; add
            ``match_prob[mask]`` as the index payload (used by the
            ``'code'`` proxy label).
        """
        loss, y_hat = self.batch_stats(pairs, seed_key)
        return self.partition(self.clean_prob(loss)) == RELIABLE, y_hat

    def reference_mask(self, pairs: Pairs, seed_key: str = "") -> np.ndarray:
        """Reliable rows (``p > eps1``, not forced noisy): the proxy pool."""
        return self.reference_rows(pairs, seed_key)[0]

    def transform(
        self,
        pairs: Pairs,
        image_index: NeighborIndex | None = None,
        seed_key: str = "",
    ) -> dict[str, np.ndarray]:
        """SPS sidecar columns for a block of pairs.

        Parameters
        ----------
        pairs : Pairs
            The rows to score (typically one shard).
        image_index : NeighborIndex or None, default=None
            Image embeddings of all reliable rows of the job, with the
            match probability as payload (see :meth:`reference_rows`).
            ``None`` or empty leaves the proxy columns empty.
        seed_key : str, default=''
            The block's batch seed key (same as when building the index).

        Returns
        -------
        columns : dict[str, np.ndarray]
            One array per sidecar column, each of length ``len(pairs)``:

            - ``sps_loss`` (float32): ``CE(i2t) + CE(t2i)``, unnormalised;
            - ``sps_clean_prob`` (float32): low-loss-component posterior p;
            - ``sps_partition`` (object): 'reliable', 'quasi' or 'noisy';
            - ``sps_proxy_key`` (object, str or None): noisy rows only, key
              of the reliable pair with the nearest image (self excluded);
            - ``sps_proxy_label`` (float32): noisy rows with a proxy only,
              NaN elsewhere;
            - ``sps_soft_label`` (float32): quasi rows only,
              ``p + (1 - p) * y_hat`` in [p, 1]; NaN elsewhere.
        """
        loss, y_hat = self.batch_stats(pairs, seed_key)
        p = self.clean_prob(loss)
        part = self.partition(p)
        soft = np.full(len(pairs), np.nan, dtype=np.float32)
        quasi = part == QUASI
        soft[quasi] = p[quasi] + (1.0 - p[quasi]) * y_hat[quasi]
        proxy_key, proxy_label = nearest_proxies(
            pairs,
            np.flatnonzero(part == NOISY),
            image_index,
            self.proxy_label,
            self.gamma,
            self.b,
        )
        return {
            "sps_loss": loss,
            "sps_clean_prob": p,
            "sps_partition": part,
            "sps_proxy_key": proxy_key,
            "sps_proxy_label": proxy_label,
            "sps_soft_label": soft,
        }

"""``match``: is this image-text pair a match? A hub-corrected, calibrated score.

Raw cosine over-rates pairs whose caption or image is a *hub* (close to
many things: "a photo of people outdoors"). ``MatchScorer`` corrects the
cosine of any frozen dual encoder with a reference pool of the data itself
and calibrates the result without labels:

- ``score="csls"`` (Lample et al., ICLR 2018): ``2 cos(x, y) - r_T(x) -
  r_I(y)``, r_T(x) the mean cosine of x's k nearest pool texts, r_I(y) of
  y's k nearest pool images (:mod:`.search`: exact search up to
  ``exact_max`` pool rows; above, candidates from a ``search_dim``-d
  projection and inverted lists, re-scored exactly).
- ``score="negclip"`` (Wang et al., NeurIPS 2024): ``cos - tau/2 *
  mean_b [lse_{j in b} cos(x, y_j)/tau + lse_{j in b} cos(x_j, y)/tau]``
  over the pool's K = pool_size // batch_size random batches b, the pair
  itself counted once in each (its negative CLIP loss, times tau).
- ``score="cosine"``: the raw cosine (baseline).

Calibration (:mod:`.calibrate`) uses shuffled pairs (x_i, y_j) of the fit
sample as a measured sample of the noise distribution, so ``match_clean_prob``
is P(clean | score) under a mixture whose noise component is known and whose
noise share pi is estimated, and ``match_keep`` is a cut chosen from the
data alone (default: where clean and noise densities cross).

Contract (:mod:`cleaner.methods.base` style; arrays only, no I/O)::

    scorer = MatchScorer(score="csls").fit(image, text, row_ids)
    cols = scorer.transform(image, text, row_ids)   # match_score/clean_prob/keep
    params, arrays = scorer.get_params(), scorer.get_arrays()
    scorer = MatchScorer.from_params(params, arrays)

``get_arrays()`` returns the pool (``pool_image``, ``pool_text`` float32,
``pool_row_ids`` int64): the pipeline stores them next to the JSON params.
Instead of storing them it may rebuild the pool: the pool is the
``pool_size`` rows of smallest seeded hash among the rows given to ``fit``,
so when ``fit`` saw every row, ``pool.pool_mask(row_ids, seed,
params["pool"]["hash_max"])`` picks exactly those rows from a stream of
shards (in hash order again via ``pool.row_hash``).

Row order never matters: pool, fit sample and shuffled pairs are chosen by
hashes of ``row_ids`` (default: positions 0..n-1, so pass real ids when the
order of rows may change between runs).
"""

from __future__ import annotations

import numpy as np

from cleaner.methods.base import pair_cosines
from cleaner.methods.match import calibrate, search, stats
from cleaner.methods.match.pool import (
    SALT_FIT,
    SALT_NULL,
    Pool,
    check_unique,
    smallest_hash,
)

COLUMNS = ("match_score", "match_clean_prob", "match_keep")
# Rows per transform block: bounds the side statistics kept at once.
_CHUNK = 1 << 16


def _as_pairs(image, text, row_ids):
    image = np.ascontiguousarray(image, dtype=np.float32)
    text = np.ascontiguousarray(text, dtype=np.float32)
    if image.ndim != 2 or image.shape != text.shape:
        raise ValueError(f"image and text must be (n, d) alike, got {image.shape} / {text.shape}")
    if row_ids is None:
        row_ids = np.arange(len(image), dtype=np.int64)
    row_ids = np.asarray(row_ids, dtype=np.int64)
    if row_ids.shape != (len(image),):
        raise ValueError(f"row_ids must have shape ({len(image)},), got {row_ids.shape}")
    return image, text, row_ids


class MatchScorer:
    """Hub-corrected match score, its calibrated clean probability and keep flag.

    Defaults were picked by ``benchmarks/bench_match.py`` (Flickr8k with
    all-MiniLM-L6-v2 and the synthetic worlds, 20/50/80% noise):

    score : {"csls", "negclip", "cosine"}, default "csls"
        csls and negclip tie on AUROC; csls needs no temperature.
    k : int, default 1
        CSLS neighbours per side (1..30 within 0.0005 AUROC). k = 1 (the
        nearest pool row's cosine) put the label-free cut closest to the best
        label-chosen one on Flickr8k + MiniLM (3 noise seeds, gap 0.66 / 0.30
        points at 20% / 50% noise, vs 1.08 / 0.83 at k = 3), and keeps the
        side statistic the cheapest (two largest values per query).
    pool_size : int, default 2**14
        Reference pairs. AUROC grows with the pool; transform cost is
        linear in it (about 190 s per 1M 512-d rows on 2 CPU cores at 2**14,
        14 s at 2**10): lower it on a CPU with a tight budget.
    batch_size : int, default 4096
        negCLIPLoss batch; larger batches were better (256 -> 4096).
    temperature : float, default 0.03
        negCLIPLoss temperature on the cosine; 0.01-0.05 tie, 0.1 is worse.
        The encoder's own training temperature (CLIP: 0.01) is a good choice.
    seed : int
        Seeds every hash-based draw (pool, fit sample, shuffled pairs).
    calibration : {"null-iso", "null-em", "gmm"}, default "null-iso"
        See :mod:`.calibrate`; null-iso assumes no shape and stays calibrated
        on every score.
    keep_rule : {"caught", "balanced", "posterior", "null-alpha"}, default "caught"
        caught: the balanced cut (within about half a point of the best
        label-chosen cut at every noise level), raised until the estimated
        share of noise caught reaches ``noise_caught``; see :mod:`.calibrate`.
    noise_caught : float, default 0.975
        Share of noisy pairs the ``caught`` rule aims to drop (0: balanced).
        0.975 is the share OSA's published CLIP figures catch.
    max_cost : float, default 0.01
        The ``caught`` rule stops raising its cut where the estimated clean
        kept + noise caught is this far below its best (one point).
    fit_size : int, default 2**15
        Rows whose scores (and shuffled pairs) the calibration is fitted on.
    null_rounds : int, default 4
        Shuffled pairs per fit row (each round a derangement).
    alpha : float, default 0.02
        Share of mismatched pairs the ``null-alpha`` rule lets through.
    search_dim : int, default 128
        CSLS: the side statistics are computed in this many dimensions of
        the pool's principal subspace (see :mod:`.search`).
    nprobe : int, default 8
        CSLS: cells (of about sqrt(pool_size)) each query is compared with.
    exact_max : int, default 4096
        CSLS: pools up to this size are compared with every query in full.
    """

    def __init__(
        self,
        score: str = "csls",
        k: int = 1,
        pool_size: int = 1 << 14,
        batch_size: int = 4096,
        temperature: float = 0.03,
        seed: int = 0,
        calibration: str = "null-iso",
        keep_rule: str = "caught",
        fit_size: int = 1 << 15,
        null_rounds: int = 4,
        alpha: float = 0.02,
        noise_caught: float = 0.975,
        max_cost: float = 0.01,
        search_dim: int = 128,
        nprobe: int = 8,
        exact_max: int = 4096,
    ):
        if score not in stats.SCORES:
            raise ValueError(f"score must be one of {stats.SCORES}, got {score!r}")
        if calibration not in calibrate.CALIBRATIONS:
            raise ValueError(f"calibration must be one of {calibrate.CALIBRATIONS}")
        if keep_rule not in calibrate.KEEP_RULES:
            raise ValueError(f"keep_rule must be one of {calibrate.KEEP_RULES}")
        if min(k, pool_size, batch_size, fit_size, null_rounds, search_dim, nprobe) < 1 \
                or exact_max < 0 or not temperature > 0:  # fmt: skip
            raise ValueError("k, pool_size, batch_size, fit_size, null_rounds, temperature, "
                             "search_dim, nprobe must be > 0")  # fmt: skip
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
        if not 0.0 <= noise_caught < 1.0 or not max_cost >= 0.0:
            raise ValueError(f"noise_caught must lie in [0, 1) and max_cost be >= 0, got "
                             f"{noise_caught}, {max_cost}")  # fmt: skip
        self.settings = {
            "score": score,
            "k": int(k),
            "pool_size": int(pool_size),
            "batch_size": int(batch_size),
            "temperature": float(temperature),
            "seed": int(seed),
            "calibration": calibration,
            "keep_rule": keep_rule,
            "fit_size": int(fit_size),
            "null_rounds": int(null_rounds),
            "alpha": float(alpha),
            "noise_caught": float(noise_caught),
            "max_cost": float(max_cost),
            "search_dim": int(search_dim),
            "nprobe": int(nprobe),
            "exact_max": int(exact_max),
        }
        self.pool: Pool | None = None
        self.calibration: dict | None = None
        self.fit_summary: dict = {}
        # real and shuffled-pair scores of the last fit (not params: for
        # reports and for refitting another calibration without rescoring)
        self.fit_scores: dict[str, np.ndarray] = {}
        self._indexes: dict = {}

    # ------------------------------------------------------------ scoring
    def _side(self, vecs: np.ndarray, side: str) -> dict[str, np.ndarray]:
        """Statistics of images (side 'image', vs pool texts) or texts."""
        st, pool = self.settings, self.pool
        other = pool.text if side == "image" else pool.image
        return stats.side_stats(
            vecs,
            other,
            st["score"],
            st["k"],
            pool.batch_starts,
            st["temperature"],
            index=self._search(side) if st["score"] == "csls" else None,
        )

    def _search(self, side: str) -> search.PoolSearch:
        """CSLS's search of the pool's other side for queries of ``side``."""
        if side not in self._indexes:
            pool = self.pool
            self._indexes[side] = self._pool_search(pool.text if side == "image" else pool.image)
        return self._indexes[side]

    def _pool_search(self, vectors: np.ndarray) -> search.PoolSearch:
        st, pool = self.settings, self.pool
        if "basis" not in self._indexes:  # one projection for both sides
            self._indexes["basis"] = search.projection(pool.image, pool.text, st["search_dim"])
        nlist = 1 if len(pool) <= st["exact_max"] else search.default_nlist(len(pool))
        return search.PoolSearch(vectors, self._indexes["basis"], nlist, st["nprobe"], st["seed"])

    def _pair(self, cos, img_stats, txt_stats, at) -> np.ndarray:
        """Scores from the side statistics of the pairs' rows; ``at``: the
        (text, image) rows' pool positions (-1 outside the pool)."""
        st = self.settings
        return stats.pair_scores(
            st["score"],
            cos,
            img_stats,
            txt_stats,
            cand_text=at[0],
            cand_image=at[1],
            k=st["k"],
            temperature=st["temperature"],
            batch_of=self.pool.batch_of,
        )

    def scores(self, image, text, row_ids=None) -> np.ndarray:
        """``match_score`` of each row's own pair (float64)."""
        if self.pool is None:
            raise RuntimeError("MatchScorer is not fitted: call fit() or from_params()")
        image, text, row_ids = _as_pairs(image, text, row_ids)
        if image.shape[1] != self.pool.image.shape[1]:
            raise ValueError(
                f"embeddings have dimension {image.shape[1]}, the pool {self.pool.image.shape[1]}"
            )
        out = np.empty(len(image), dtype=np.float64)
        for s in range(0, len(image), _CHUNK):
            x, y, ids = image[s : s + _CHUNK], text[s : s + _CHUNK], row_ids[s : s + _CHUNK]
            at = self.pool.index_of(ids)
            out[s : s + _CHUNK] = self._pair(
                pair_cosines(x, y), self._side(x, "image"), self._side(y, "text"), (at, at)
            )
        return out

    def _real_and_null(self, image, text, row_ids, rows) -> tuple[np.ndarray, np.ndarray]:
        """Scores of the ``rows``' own pairs and of seeded shuffled pairs (x_i, y_j).

        The side statistics are computed once and shared: rows are put in a
        seeded hash order, and round r pairs each image with the text r
        places further round that cycle (a derangement per round)."""
        # the sample is read once, already in that order (one copy of the rows)
        rows = rows[smallest_hash(row_ids[rows], self.settings["seed"], SALT_NULL, len(rows))]
        x, y, ids = image[rows], text[rows], row_ids[rows]
        img_st, txt_st = self._side(x, "image"), self._side(y, "text")
        at = self.pool.index_of(ids)
        real = self._pair(pair_cosines(x, y), img_st, txt_st, (at, at))
        null = []
        for r in range(1, min(self.settings["null_rounds"], len(rows) - 1) + 1):
            j = np.roll(np.arange(len(rows)), -r)
            cos = pair_cosines(x, y, shift=r)  # = x_i . y_j, y[j] not copied
            txt_j = {key: v[j] for key, v in txt_st.items()}
            null.append(self._pair(cos, img_st, txt_j, (at[j], at)))
        return real, np.concatenate(null)

    # -------------------------------------------------------- fit/transform
    def fit(self, image, text, row_ids=None) -> MatchScorer:
        """Draw the pool, score a seeded sample and its shuffled pairs, calibrate."""
        image, text, row_ids = _as_pairs(image, text, row_ids)
        if len(image) < 3:
            raise ValueError("match needs at least 3 rows to fit")
        check_unique(row_ids)
        st = self.settings
        self.pool = Pool.draw(image, text, row_ids, st["pool_size"], st["seed"], st["batch_size"])
        self._indexes = {}
        sample = smallest_hash(row_ids, st["seed"], SALT_FIT, st["fit_size"])
        real, null = self._real_and_null(image, text, row_ids, sample)
        self.fit_scores = {"real": real, "null": null}
        self.calibration = calibrate.fit_calibration(
            st["calibration"], real, null, st["alpha"], st["noise_caught"], st["max_cost"]
        )
        self.fit_summary = {
            "n_fit": int(len(sample)),
            "n_null": int(len(null)),
            "pi": float(self.calibration["pi"]),
            "cut": self._cut(np.r_[real, null]),
        }
        return self

    def _cut(self, values: np.ndarray) -> float | None:
        """Lowest score kept, on a fine grid over the fitted range (for reports)."""
        grid = np.linspace(values.min(), values.max(), 4001)
        prob = calibrate.clean_prob(self.calibration, grid)
        keep = calibrate.keep_mask(self.calibration, grid, prob, self.settings["keep_rule"])
        return float(grid[np.argmax(keep)]) if keep.any() else None

    def transform(self, image, text, row_ids=None) -> dict[str, np.ndarray]:
        """The three columns for each row, in the order given."""
        return self.transform_prepared([self.prepare(image, text, row_ids)])[0]

    def prepare(self, image, text, row_ids=None) -> dict:
        """What :meth:`transform_prepared` needs of these rows: the rows
        themselves, checked. All the work is done there, for the whole batch
        at once (the local runner calls it on a thread of its own, beside
        the other methods' transforms of the next shards)."""
        self._check_fitted()
        image, text, row_ids = _as_pairs(image, text, row_ids)
        if image.shape[1] != self.pool.image.shape[1]:
            raise ValueError(
                f"embeddings have dimension {image.shape[1]}, the pool {self.pool.image.shape[1]}"
            )
        return {"rows": (image, text, row_ids)}

    def transform_prepared(self, parts: list[dict]) -> list[dict[str, np.ndarray]]:
        """:meth:`transform` of several :meth:`prepare` results, the pool
        searched for all their rows at once: larger matrix products (a shard
        of 10k rows alone ran them at 1.8x the cost per row of 120k rows
        together), and each row's values do not depend on its batch."""
        if self.settings["score"] != "csls":
            return [self._columns(self.scores(*p["rows"])) for p in parts]
        rows = [p["rows"] for p in parts]
        kk = min(self.settings["k"] + 1, len(self.pool))
        member = self.pool.index_of(np.concatenate([ids for _, _, ids in rows]))
        # a row outside the pool has no own pair among the pool's to skip
        short = member < 0 if kk > self.settings["k"] else None
        side = {}
        for i, name in enumerate(("image", "text")):
            search = self._search(name)
            proj, cells = search.project_parts([r[i] for r in rows], _CHUNK)
            side[name] = {"proj": proj, "top_val": search.top_values(proj, kk, short, cells)}
        cos = np.concatenate([pair_cosines(x, y) for x, y, _ in rows])
        cols = self._columns(self._pair(cos, side["image"], side["text"], (member, member)))
        ends = np.cumsum([len(ids) for _, _, ids in rows])
        return [{c: v[e - len(r[2]) : e] for c, v in cols.items()} for e, r in zip(ends, rows)]

    def _columns(self, score: np.ndarray) -> dict[str, np.ndarray]:
        prob = calibrate.clean_prob(self.calibration, score)
        keep = calibrate.keep_mask(self.calibration, score, prob, self.settings["keep_rule"])
        return {
            "match_score": score.astype(np.float32),
            "match_clean_prob": prob.astype(np.float32),
            "match_keep": keep,
        }

    # --------------------------------------------------------------- params
    def _check_fitted(self) -> None:
        if self.pool is None or self.calibration is None:
            raise RuntimeError("MatchScorer is not fitted: call fit() or from_params()")

    def get_params(self) -> dict:
        """JSON-able settings, calibration and pool description (no vectors)."""
        self._check_fitted()
        pool = self.pool
        return {
            "settings": dict(self.settings),
            "calibration": self.calibration,
            "pool": {
                "size": len(pool),
                "dim": int(pool.image.shape[1]),
                "n_batches": pool.n_batches,
                "hash_max": str(pool.hash_max),  # uint64: a string survives JSON readers
            },
            "fit": dict(self.fit_summary),
        }

    def get_arrays(self) -> dict[str, np.ndarray]:
        """The pool vectors and row ids, to be stored beside the params."""
        self._check_fitted()
        return self.pool.arrays()

    @classmethod
    def from_params(cls, params: dict, arrays: dict) -> MatchScorer:
        scorer = cls(**params["settings"])
        meta = params["pool"]
        scorer.pool = Pool.from_arrays(arrays, meta["n_batches"], int(meta["hash_max"]))
        if len(scorer.pool) != meta["size"] or scorer.pool.image.shape[1] != meta["dim"]:
            raise ValueError("pool arrays do not match the params (size or dimension)")
        scorer.calibration = dict(params["calibration"])
        scorer.fit_summary = dict(params.get("fit", {}))
        return scorer

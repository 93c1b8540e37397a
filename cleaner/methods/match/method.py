"""The ``match`` method's declaration: columns, options, and a fit that
collects a bounded, order-independent candidate set during the job's
shared fit pass.

The scorer draws its reference pool and its calibration sample as the rows
of smallest seeded hash. Rows are identified by a hash of (shard, key), not
by their position, so the same samples give the same pool and verdicts
whatever their order. ``sample_columns`` (called on every shard in the fit
pass that SDD and SPS read their samples in) offers each shard's row ids to
a streaming bottom-k (:class:`Candidates`), so memory is bounded by the pool
and sample sizes, not by the data, and the fit then reads the vectors of
exactly the rows it would have picked from all of them by row id
(``ctx.gather_ids``) -- no second pass over the cache (at 1M rows a pass
costs seconds; the cost target is 20% of the whole scoring). Without that
pass (a fit called on its own), ``_candidates`` streams the cache itself.
The pool vectors are kept as an array file in the job's state folder
(``ctx.save_arrays``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cleaner.methods.registry import FitContext, Method, Option

MARGIN = 1.5  # candidates kept per needed row: the threshold is set from an expectation
_BUILT: dict = {}  # pool file sha1 -> the searches its fit built, until restored


def stable_ids(stem: str, keys) -> np.ndarray:
    """int64 ids of samples from their shard and key (never their position)."""
    import pandas as pd

    names = np.array([f"{stem}\x00{k}" for k in keys], dtype=object)
    return pd.util.hash_array(names, categorize=False).view(np.int64)


def _pair_ids(pairs, stem: str) -> np.ndarray:
    """:func:`stable_ids` of a shard's rows, memoised in ``pairs.extra``
    (kept between the fit and transform passes)."""
    hit = pairs.extra.get("match_ids")
    if hit is None or len(hit) != len(pairs.keys):
        hit = pairs.extra["match_ids"] = stable_ids(stem, pairs.keys)
    return hit


def _choice(allowed: tuple):
    def check(value) -> str | None:
        return None if value in allowed else f"must be one of {', '.join(allowed)}, not {value!r}"

    return check


class Match(Method):
    name = "match"
    summary = (
        "hub-corrected match score (CSLS or negCLIPLoss) with a clean probability calibrated "
        "against shuffled pairs, and a keep flag chosen without labels"
    )
    fields = (
        pa.field("match_score", pa.float32()),
        pa.field("match_clean_prob", pa.float32()),
        pa.field("match_keep", pa.bool_(), nullable=False),
    )
    fill_for_failed = {"match_keep": False}
    keep_expr = "match_keep"
    # imported on the job's preload thread (1.3 s when check_options did it
    # up front, on the critical path): calibration, pool cells, row ids
    preload = ("sklearn.isotonic", "faiss", "pandas")
    fits_aside = True  # pool searches and scoring on its own threads, ~2 s at 1M rows
    # joins the job's shared fit pass (sample_columns) to collect its
    # candidate rows there, instead of reading the whole cache once more
    samples_rows = True
    options = (
        Option("match_score", "csls", "match: the score, csls | negclip | cosine.", type=str,
               check=_choice(("csls", "negclip", "cosine"))),
        Option("match_k", 1, "match: CSLS neighbours per side in the pool.", type=int),
        Option("match_pool_size", 1 << 14, "match: reference pool rows (seeded sample).",
               type=int),
        Option("match_batch_size", 4096, "match: negCLIPLoss batch size within the pool.",
               type=int),
        Option("match_temperature", 0.03, "match: negCLIPLoss temperature tau."),
        Option("match_fit_size", 1 << 15, "match: rows scored to calibrate (seeded sample).",
               type=int),
        Option("match_calibration", "null-iso", "match: calibration, null-iso | null-em | gmm.",
               type=str, check=_choice(("null-iso", "null-em", "gmm"))),
        Option("match_keep_rule", "caught", "match: keep rule, caught | balanced | posterior | "
               "null-alpha.", type=str,
               check=_choice(("caught", "balanced", "posterior", "null-alpha"))),
        Option("match_noise_caught", 0.975, "match: share of noisy pairs the caught rule aims "
               "to drop (estimated without labels; 0 = the balanced cut)."),
        Option("match_max_cost", 0.01, "match: the caught rule gives up at most this much of "
               "the estimated clean kept + noise caught (share) to reach its target."),
        Option("match_search_dim", 128, "match: CSLS side statistics in this many principal "
               "dimensions of the pool.", type=int),
        Option("match_nprobe", 8, "match: CSLS pool cells compared with each query.", type=int),
    )  # fmt: skip

    def check_options(self, options: dict) -> None:
        try:
            self.new_scorer(options, 0)
        except ValueError as exc:
            raise ValueError(f"match option: {exc}") from None

    def new_scorer(self, options: dict, seed: int):
        from cleaner.methods.match.scorer import MatchScorer

        o = options
        return MatchScorer(
            score=o["match_score"], k=o["match_k"], pool_size=o["match_pool_size"],
            batch_size=o["match_batch_size"], temperature=o["match_temperature"], seed=seed,
            calibration=o["match_calibration"], keep_rule=o["match_keep_rule"],
            fit_size=o["match_fit_size"], noise_caught=o["match_noise_caught"],
            max_cost=o["match_max_cost"],
            search_dim=o["match_search_dim"], nprobe=o["match_nprobe"],
        )  # fmt: skip

    def sample_columns(self, scorer, pairs, seed_key: str) -> dict[str, np.ndarray]:
        """Offer the shard's rows to the scorer's candidate collector (rows
        of smallest pool / fit-sample hash, so far); the one column returned
        is a placeholder, the pipeline's sample of per-row values is unused."""
        if getattr(scorer, "candidates", None) is None:
            scorer.candidates = Candidates(scorer.settings)
        scorer.candidates.offer(_pair_ids(pairs, seed_key), pairs.row_ids)
        return {"match_offered": np.ones(len(pairs.keys), dtype=bool)}

    def fit(self, scorer, ctx: FitContext) -> dict:
        collected = getattr(scorer, "candidates", None)
        if collected is not None and ctx.gather_ids is not None:
            ids, row_ids = collected.result()  # then only the chosen rows are read
            image, text = ctx.gather_ids(row_ids, "image"), ctx.gather_ids(row_ids, "text")
        else:
            image, text, ids = _candidates(scorer, ctx)
        scorer.candidates = None
        if len(ids) < 3:
            raise ValueError("match needs at least 3 scorable samples to fit on")
        scorer.fit(image, text, ids)
        params = scorer.get_params()
        params["pool_file"] = ctx.save_arrays("match_pool", scorer.get_arrays())
        # the searches built for the fit, for the restore that follows in this
        # process (k-means and projection again cost 0.4 s at 1M rows)
        _BUILT.clear()
        _BUILT[params["pool_file"]["sha1"]] = scorer._indexes
        params["candidates"] = int(len(ids))
        ctx.log(
            f"match: estimated noise share {params['fit']['pi']:.3f} "
            f"({params['settings']['score']}, pool {params['pool']['size']})"
        )
        return params

    def restore(self, params: dict, ctx: FitContext):
        from cleaner.methods.match.scorer import MatchScorer

        core = {k: v for k, v in params.items() if k not in ("pool_file", "candidates")}
        scorer = MatchScorer.from_params(core, ctx.load_arrays(params["pool_file"]))
        # same pool file, same settings; taken, so the module keeps nothing after the job
        built = _BUILT.pop(params["pool_file"]["sha1"], None)
        if built is not None and core["settings"] == scorer.settings:
            scorer._indexes = dict(built)
        return scorer

    # the pool search of 2^15 rows at once (about 250 queries per pool cell
    # and side: most of the gain of larger matrix products). A batch holds
    # its rows (4 KiB a row at 512-d) until it is finished beside the next
    # one: at 1M rows 2^15 measured peak RSS 1.41-1.44 GiB and transform
    # 37.0-39.8 s, 2^16 1.68-1.69 GiB and 39.1-40.4 s
    batch_rows = 1 << 15

    def transform(self, scorer, pairs, pools: dict, seed_key: str) -> dict[str, np.ndarray]:
        return self.transform_batch(scorer, [self.prepare(scorer, pairs, seed_key)])[0]

    def prepare(self, scorer, pairs, seed_key: str) -> dict:
        return scorer.prepare(pairs.image, pairs.text, _pair_ids(pairs, seed_key))

    def transform_batch(self, scorer, prepared: list) -> list[dict[str, np.ndarray]]:
        return scorer.transform_prepared(prepared)


class Candidates:
    """Streaming bottom-k: the rows of smallest pool hash (pool_size of them)
    and of smallest fit-sample hash (fit_size), whatever order the shards
    and rows come in. Only ids are kept (the fit then reads the chosen
    rows' vectors): memory at most PRUNE x (pool_size + fit_size) x 32 bytes,
    and no vector is copied during the pass (copying them cost 3 s per 1M
    rows)."""

    PRUNE = 1.25

    def __init__(self, settings: dict):
        self.settings = settings
        self.parts: list[tuple] = []
        self.size = 0
        self.limits = None  # (pool, fit) hash thresholds once pruned

    def offer(self, ids: np.ndarray, row_ids: np.ndarray) -> None:
        """``ids``: the stable ids the draws hash; ``row_ids``: where the
        pipeline finds each row (:meth:`FitContext.gather_ids`)."""
        from cleaner.methods.match.pool import SALT_FIT, SALT_POOL, row_hash

        seed = self.settings["seed"]
        hp, hf = row_hash(ids, seed, SALT_POOL), row_hash(ids, seed, SALT_FIT)
        keep = np.ones(len(ids), dtype=bool)
        if self.limits is not None:
            keep = (hp <= self.limits[0]) | (hf <= self.limits[1])
        if keep.any():
            self.parts.append((hp[keep], hf[keep], ids[keep], np.asarray(row_ids)[keep]))
            self.size += int(keep.sum())
        if self.size > self.PRUNE * (self.settings["pool_size"] + self.settings["fit_size"]):
            self._prune()

    def _prune(self) -> None:
        hp, hf, ids, rids = (np.concatenate([p[i] for p in self.parts]) for i in range(4))
        st = self.settings
        pool_k, fit_k = min(st["pool_size"], len(hp)), min(st["fit_size"], len(hp))
        lim_p = np.partition(hp, pool_k - 1)[pool_k - 1]
        lim_f = np.partition(hf, fit_k - 1)[fit_k - 1]
        keep = (hp <= lim_p) | (hf <= lim_f)
        self.parts = [(hp[keep], hf[keep], ids[keep], rids[keep])]
        self.size = int(keep.sum())
        if len(hp) >= st["pool_size"] and len(hp) >= st["fit_size"]:
            self.limits = (lim_p, lim_f)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(stable ids, row ids) of the rows kept."""
        if not self.parts:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        self._prune()
        return self.parts[0][2], self.parts[0][3]


def _candidates(scorer, ctx: FitContext):
    """Rows whose pool or fit-sample hash is small enough to be drawn: a
    superset of the rows the scorer draws from the whole data. Retried with
    a wider threshold in the (rare) case it kept too few."""
    from cleaner.methods.match.pool import SALT_FIT, SALT_POOL, row_hash

    st, total = scorer.settings, max(1, int(sum(ctx.ok_counts)))
    need = {SALT_POOL: st["pool_size"], SALT_FIT: st["fit_size"]}
    margin = MARGIN
    while True:
        rate = {s: min(1.0, margin * n / total) for s, n in need.items()}
        limit = {s: np.uint64(min(2**64 - 1, int(r * 2**64))) for s, r in rate.items()}
        parts, counts = [], dict.fromkeys(need, 0)
        for stem, view in ctx.iter_views("fit match"):
            ids = stable_ids(stem, view.pairs.keys)
            keep = np.zeros(len(ids), dtype=bool)
            for salt in need:
                under = row_hash(ids, st["seed"], salt) <= limit[salt]
                counts[salt] += int(under.sum())
                keep |= under
            parts.append((view.pairs.image[keep], view.pairs.text[keep], ids[keep]))
        if all(counts[s] >= min(need[s], total) or rate[s] >= 1.0 for s in need):
            break
        margin *= 2
    if not parts:
        return np.zeros((0, 1), np.float32), np.zeros((0, 1), np.float32), np.zeros(0, np.int64)
    return tuple(np.concatenate(col) for col in zip(*parts))

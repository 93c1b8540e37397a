"""The ``match`` method's declaration: columns, options, and a fit that
streams the cache once for a bounded, order-independent candidate set.

The scorer draws its reference pool and its calibration sample as the rows
of smallest seeded hash. Rows are identified by a hash of (shard, key), not
by their position, so the same samples give the same pool and verdicts
whatever their order. The fit pass keeps only rows whose hash falls under a
threshold set from the expected count (with margin), so memory is bounded
by the pool and sample sizes, not by the data; the scorer then picks exactly
the rows it would have picked from all of them. The pool vectors are kept
as an array file in the job's state folder (``ctx.save_arrays``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cleaner.methods.registry import FitContext, Method, Option

MARGIN = 1.5  # candidates kept per needed row: the threshold is set from an expectation


def stable_ids(stem: str, keys) -> np.ndarray:
    """int64 ids of samples from their shard and key (never their position)."""
    import pandas as pd

    names = np.array([f"{stem}\x00{k}" for k in keys], dtype=object)
    return pd.util.hash_array(names, categorize=False).view(np.int64)


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
    options = (
        Option("match_score", "csls", "match: the score, csls | negclip | cosine.", type=str,
               check=_choice(("csls", "negclip", "cosine"))),
        Option("match_k", 3, "match: CSLS neighbours per side in the pool.", type=int),
        Option("match_pool_size", 1 << 14, "match: reference pool rows (seeded sample).",
               type=int),
        Option("match_batch_size", 4096, "match: negCLIPLoss batch size within the pool.",
               type=int),
        Option("match_temperature", 0.03, "match: negCLIPLoss temperature tau."),
        Option("match_fit_size", 1 << 15, "match: rows scored to calibrate (seeded sample).",
               type=int),
        Option("match_calibration", "null-iso", "match: calibration, null-iso | null-em | gmm.",
               type=str, check=_choice(("null-iso", "null-em", "gmm"))),
        Option("match_keep_rule", "balanced", "match: keep rule, balanced | posterior | "
               "null-alpha.", type=str, check=_choice(("balanced", "posterior", "null-alpha"))),
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
            fit_size=o["match_fit_size"],
        )  # fmt: skip

    def fit(self, scorer, ctx: FitContext) -> dict:
        image, text, ids = _candidates(scorer, ctx)
        if len(ids) < 3:
            raise ValueError("match needs at least 3 scorable samples to fit on")
        scorer.fit(image, text, ids)
        params = scorer.get_params()
        params["pool_file"] = ctx.save_arrays("match_pool", scorer.get_arrays())
        params["candidates"] = int(len(ids))
        ctx.log(
            f"match: estimated noise share {params['fit']['pi']:.3f} "
            f"({params['settings']['score']}, pool {params['pool']['size']})"
        )
        return params

    def restore(self, params: dict, ctx: FitContext):
        from cleaner.methods.match.scorer import MatchScorer

        core = {k: v for k, v in params.items() if k not in ("pool_file", "candidates")}
        return MatchScorer.from_params(core, ctx.load_arrays(params["pool_file"]))

    def transform(self, scorer, pairs, pools: dict, seed_key: str) -> dict[str, np.ndarray]:
        return scorer.transform(pairs.image, pairs.text, stable_ids(seed_key, pairs.keys))


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

"""SPS's declaration: columns, options, the GMM fit on the in-batch loss,
the reliable-image pool and the transform.

With ``--thresholds auto`` the fit maps eps2 from the cosine's label-free
calibration (:mod:`cleaner.methods.thresholds`): the calibration says what
share of the rows lies at or below the keep cut (``drop_share``), SPS's own
clean probability says which rows: eps2 is the ``drop_share`` quantile of
the fitted clean probabilities, so SPS's noisy set is as large as the
calibrated cut's drop set, chosen by SPS's score. The 1% forcing rule is
then moot (the calibration decides how many rows look noisy); eps1 is raised
to eps2 only if it lay below.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cleaner.methods.registry import FitContext, Method, Option


def _proxy_label(value) -> str | None:
    return None if value in ("code", "paper") else "--sps-proxy-label must be code or paper"


def _at_least_two(value) -> str | None:
    return None if value >= 2 else "--sps-batch-size must be at least 2"


class SPS(Method):
    name = "sps"
    default = True
    samples_rows = True
    summary = "reliable / quasi / noisy partition, proxy partners and soft labels"
    keep_expr = "sps_partition != 'noisy'"
    preload = ("sklearn.mixture", "sklearn.isotonic", "faiss")  # isotonic: auto mode
    fields = (
        pa.field("sps_loss", pa.float32()),
        pa.field("sps_clean_prob", pa.float32()),
        pa.field("sps_partition", pa.string()),  # reliable | quasi | noisy
        pa.field("sps_proxy_key", pa.string()),
        pa.field("sps_proxy_label", pa.float32()),
        pa.field("sps_soft_label", pa.float32()),
    )
    options = (
        Option(
            "sps_batch_size",
            128,
            "SPS: rows per shuffled InfoNCE batch for the per-sample loss.",
            type=int,
            check=_at_least_two,
        ),
        Option(
            "sps_eps1",
            0.99,
            "SPS: reliable if clean probability > eps1 (paper 0.99; released code 0.6).",
        ),
        Option("sps_eps2", 0.5, "SPS: noisy if clean probability <= eps2."),
        Option(
            "sps_proxy_label",
            "code",
            "SPS proxy label: 'code' (match prob x image cosine, 0 below 0.5) or 'paper' "
            "(1/(gamma+exp(-b*S))).",
            type=str,
            check=_proxy_label,
        ),
        Option("sps_gamma", 1.0, "gamma of the paper's proxy label."),
        Option("sps_b", 5.0, "b of the paper's proxy label."),
    )

    def check_options(self, options: dict) -> None:
        super().check_options(options)
        if not 0 <= options["sps_eps2"] <= options["sps_eps1"] <= 1:
            raise ValueError("need 0 <= --sps-eps2 <= --sps-eps1 <= 1")

    def new_scorer(self, options: dict, seed: int):
        from cleaner.methods.sps.scorer import SPSScorer

        return SPSScorer(
            batch_size=options["sps_batch_size"],
            eps1=options["sps_eps1"],
            eps2=options["sps_eps2"],
            proxy_label=options["sps_proxy_label"],
            gamma=options["sps_gamma"],
            b=options["sps_b"],
            seed=seed,
            batch_by="key",  # same samples, same batches, in any row order
        )

    def sample_columns(self, scorer, pairs, seed_key: str) -> dict[str, np.ndarray]:
        return {"sps_loss": scorer.per_sample_loss(pairs, seed_key=seed_key)}

    def fit(self, scorer, ctx: FitContext) -> dict:
        loss = ctx.sample["sps_loss"]
        thresholds = _map_thresholds(scorer.fit(loss), ctx, loss)
        params = scorer.get_params()
        params["thresholds"] = thresholds
        reliable = scorer.partition(scorer.clean_prob(loss)) == "reliable"
        params["pool_fraction"] = float(np.mean(reliable))
        return params

    def restore(self, params: dict, ctx: FitContext | None = None):
        from cleaner.methods.sps.scorer import SPSScorer

        return SPSScorer.from_params(params)

    def pools(self, scorer) -> dict[str, str]:
        return {"sps_image": "image"}

    def reference_rows(self, scorer, pairs, seed_key: str) -> dict[str, tuple]:
        m, match_prob = scorer.reference_rows(pairs, seed_key=seed_key)
        return {"sps_image": (m, match_prob)}

    def queries(self, scorer, pairs, seed_key: str) -> dict[str, np.ndarray]:
        # only noisy rows look for a proxy (losses are memoised: cheap here)
        loss, _ = scorer.batch_stats(pairs, seed_key=seed_key)
        return {"sps_image": scorer.partition(scorer.clean_prob(loss)) == "noisy"}

    def transform(self, scorer, pairs, pools: dict, seed_key: str) -> dict[str, np.ndarray]:
        return scorer.transform(pairs, pools.get("sps_image"), seed_key=seed_key)


def _map_thresholds(scorer, ctx: FitContext, loss: np.ndarray) -> dict:
    """In auto mode, set the fitted scorer's eps2 (and eps1 if below it)
    from the calibrated cosine's drop share; returns how they were set."""
    from cleaner.methods import thresholds as T

    mode = T.mode_of(ctx.settings)
    if mode != "auto":
        return {"mode": mode}
    cal, _ = T.fit_cosine_calibration(ctx)
    cal = T.require(cal, "sps")
    share = float(cal["drop_share"])
    p = np.asarray(scorer.clean_prob(loss), np.float64)
    # an attained value, so p <= eps2 holds for the same rows on the float32 column
    scorer.eps2 = float(np.quantile(p, share, method="lower")) if share > 0 and len(p) else 0.0
    scorer.eps1 = max(scorer.eps1, scorer.eps2)
    scorer.forced_noisy_threshold_ = None
    ctx.log(
        f"sps: thresholds auto: eps2 = {scorer.eps2:.4g} (the {100 * share:.1f}% of rows "
        f"at or below the calibrated cosine cut {cal['cut']:.4f}), eps1 = {scorer.eps1:.4g}"
    )
    return {
        "mode": mode,
        "eps2": "the clean-probability quantile at the share of sampled rows whose cosine is "
        "at or below the calibrated keep cut (as many noisy rows as the cut drops)",
        "drop_share": share,
        "calibration": cal,
    }

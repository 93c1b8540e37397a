"""OSA's declaration: columns, and the fit that estimates beta.

OSA has no options of its own beyond the job's beta settings
(``--beta-source``, ``--beta-samples``, ``--beta``, ``--thresholds``), which
stay on ScoreSettings because the sidecar metadata and the report show beta
on its own. Its fit is the beta estimate: with ``--thresholds paper`` from
noise (needs the estimator) or from seeded mismatched pairs of the data
(needs rows of the cache), weighted with the paper's cubic; with ``auto`` the
cosine's calibrated balanced cut (:mod:`cleaner.methods.thresholds`: where
clean and noise densities cross, the paper's own reading of beta), weighted
with the monotone form, and the verdict ``cosine > keep_cut`` at the
calibrated keep cut (the balanced cut raised until the estimated noise
caught reaches its target): a weight zeroed up to the keep cut would tie
the clean pairs it drops with the noise and cost the weight's ranking. Either way the fit records whether the cubic's
assumptions hold on this data (``params["assumptions"]``) and the cosine's
label-free calibration (noise share, cut) it measured them with.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cleaner.methods.registry import FitContext, Method


class OSA(Method):
    name = "osa"
    default = True
    summary = "per-sample loss weight from the cosine and the debiased boundary beta"
    fields = (
        pa.field("cosine", pa.float32()),  # null when status != ok
        pa.field("osa_weight", pa.float32(), nullable=False),  # 0 when status != ok
        pa.field("osa_weight_norm", pa.float32(), nullable=False),
    )
    fill_for_failed = {"osa_weight": 0.0, "osa_weight_norm": 0.0}
    # OSA's own noise rule (d > 0); the same as osa_weight > 0 in the monotone
    # form, and in the paper's only while beta >= 0
    keep_expr = "cosine > {beta}"
    preload = ("sklearn.isotonic",)  # the cosine calibration

    def keep_where(self, params: dict) -> str | None:
        # auto mode keeps above the calibrated keep cut; beta (the weight's
        # boundary) is the density crossing below it
        beta = params.get("keep_cut", (params.get("beta") or {}).get("value"))
        return None if beta is None else self.keep_expr.format(beta=repr(float(beta)))

    def fit(self, scorer, ctx: FitContext) -> dict:
        from cleaner.methods import thresholds as T
        from cleaner.methods.beta import BetaEstimate

        mode = T.mode_of(ctx.settings)
        cal, cosines = T.fit_cosine_calibration(ctx)
        if mode == "auto":
            cal = T.require(cal, "osa")
            beta = BetaEstimate(value=cal["balanced_cut"], std=0.0, se=cal["cut_se"],
                                k=cal["n_real"],
                                n_pairs=cal["n_null"], source="auto", seed=ctx.seed)  # fmt: skip
            form = "monotone"
        else:
            beta, form = estimate_beta(ctx), "paper"
        ctx.log(
            f"beta = {beta.value:.4f} (source {beta.source}, K={beta.k}, "
            f"std {beta.std:.4f}, se {beta.se:.5f})"
        )
        thresholds = {"mode": mode, "form": form}
        extra = {}
        if mode == "auto":
            thresholds["beta"] = "the balanced cut: clean and noise cosine densities cross there"
            thresholds["keep_cut"] = (
                "the verdict's cut (cosine > keep_cut): the balanced cut raised until the "
                "estimated noise caught reaches its target (at most 1 point of estimated clean "
                "kept + noise caught given up)"
            )
            extra["keep_cut"] = cal["cut"]
        return {
            **extra,
            "beta": beta.to_dict(),
            "form": form,
            "thresholds": thresholds,
            "assumptions": T.osa_assumptions(cosines, beta.value, form),
            "calibration": cal,
        }

    def restore(self, params: dict, ctx: FitContext | None = None):
        from cleaner.methods.osa.scorer import OSAScorer

        return OSAScorer.from_params({"beta": params["beta"], "form": params.get("form", "paper")})

    def transform(self, scorer, pairs, pools: dict, seed_key: str) -> dict[str, np.ndarray]:
        return scorer.transform(pairs)


def estimate_beta(ctx: FitContext):
    """Beta by hand, from noise inputs through the estimator, or from K
    seeded mismatched pairs of the data (no image or caption used twice)."""
    from cleaner.errors import NothingScoredError
    from cleaner.methods.beta import (
        DEFAULT_NOISE_K,
        DEFAULT_SHUFFLED_K,
        BetaEstimate,
        noise_beta,
        sample_mismatched_indices,
        shuffled_beta_from_rows,
    )

    st = ctx.settings
    if st.beta is not None:
        return BetaEstimate.manual(st.beta)
    if st.beta_source == "noise":
        k = st.beta_samples or DEFAULT_NOISE_K
        ctx.log(f"estimating beta from {k} noise images x {k} random token sequences ...")
        return noise_beta(ctx.estimator(), k=k, seed=st.seed)
    k = st.beta_samples or DEFAULT_SHUFFLED_K
    if sum(ctx.ok_counts) < 2:
        raise NothingScoredError(
            "shuffled beta needs at least two scorable samples; none or one found"
        )
    i, j = sample_mismatched_indices(ctx.ok_counts, k, st.seed)
    if len(i) < k:
        ctx.log(
            f"shuffled beta: {sum(ctx.ok_counts)} scorable samples support {len(i)} "
            f"independent mismatched pairs, not {k}: using K={len(i)}"
        )
    return shuffled_beta_from_rows(ctx.gather_rows(i, "image"), ctx.gather_rows(j, "text"), st.seed)

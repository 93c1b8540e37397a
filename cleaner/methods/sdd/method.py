"""SDD's declaration: columns, options, the GMM fit on the cosine, the
clean-set pools (by image and by text) and the transform.

With ``--thresholds auto`` the fit first maps alpha and beta_c from the
cosine's label-free calibration (:mod:`cleaner.methods.thresholds`: alpha at
the keep cut -- where clean and noise densities cross, raised until the
estimated noise caught reaches its target -- and beta_c where the clean
posterior reaches 0.99), in place of ``--sdd-alpha`` / ``--sdd-beta-c``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from cleaner.methods.registry import FitContext, Method, Option


class SDD(Method):
    name = "sdd"
    default = True
    samples_rows = True
    summary = "self-drop mask, confidence weight and memory-bank neighbours"
    fields = (
        pa.field("sdd_keep", pa.bool_(), nullable=False),  # False when status != ok
        pa.field("sdd_w_con", pa.float32()),
        pa.field("sdd_clean", pa.bool_()),
        pa.field("sdd_mb_image_key", pa.string()),
        pa.field("sdd_mb_text_key", pa.string()),
    )
    fill_for_failed = {"sdd_keep": False}
    keep_expr = "sdd_keep"
    preload = ("sklearn.isotonic", "sklearn.mixture", "faiss")
    options = (
        Option("sdd_alpha", 20.0, "SDD self-drop: keep a pair if 100*cosine > alpha."),
        Option("sdd_beta_c", 30.0, "SDD clean set (memory-bank pool): 100*cosine > beta_c."),
    )

    def new_scorer(self, options: dict, seed: int):
        from cleaner.methods.sdd.scorer import SDDScorer

        return SDDScorer(
            alpha=options["sdd_alpha"], beta_c=options["sdd_beta_c"], random_state=seed
        )

    def sample_columns(self, scorer, pairs, seed_key: str) -> dict[str, np.ndarray]:
        return {"cosine": pairs.cosine}

    def fit(self, scorer, ctx: FitContext) -> dict:
        cos = ctx.sample["cosine"]
        thresholds = _map_thresholds(scorer, ctx)
        params = scorer.fit(cos).get_params()
        params["thresholds"] = thresholds
        # expected size of the memory-bank pool, to size the faiss index
        params["pool_fraction"] = float(np.mean(100.0 * cos > scorer.beta_c))
        return params

    def restore(self, params: dict, ctx: FitContext | None = None):
        from cleaner.methods.sdd.scorer import SDDScorer

        return SDDScorer.from_params(params)

    def pools(self, scorer) -> dict[str, str]:
        return {"sdd_image": "image", "sdd_text": "text"}

    def reference_rows(self, scorer, pairs, seed_key: str) -> dict[str, tuple]:
        m = scorer.reference_mask(pairs)
        return {"sdd_image": (m, None), "sdd_text": (m, None)}

    def transform(self, scorer, pairs, pools: dict, seed_key: str) -> dict[str, np.ndarray]:
        return scorer.transform(pairs, pools.get("sdd_image"), pools.get("sdd_text"))


def _map_thresholds(scorer, ctx: FitContext) -> dict:
    """In auto mode, set the scorer's alpha and beta_c from the calibrated
    cosine (before its GMM fit); returns how they were set."""
    from cleaner.methods import thresholds as T

    mode = T.mode_of(ctx.settings)
    if mode != "auto":
        return {"mode": mode}
    cal, _ = T.fit_cosine_calibration(ctx)
    cal = T.require(cal, "sdd")
    scorer.alpha = 100.0 * cal["cut"]
    scorer.beta_c = 100.0 * cal["clean_cut"]
    ctx.log(
        f"sdd: thresholds auto: alpha = {scorer.alpha:.2f}, beta_c = {scorer.beta_c:.2f} "
        f"(cosine {cal['cut']:.4f} / {cal['clean_cut']:.4f}; noise share {cal['pi']:.3f})"
    )
    return {
        "mode": mode,
        "alpha": "100 x the calibrated keep cut (the density crossing, raised by the "
        "noise-caught rule; see cleaner.methods.thresholds)",
        "beta_c": f"100 x the lowest cosine with P(clean | cosine) > {cal['clean_set_prob']}"
        + ("" if cal["clean_prob_reached"] else " (not reached: where it is highest)"),
        "calibration": cal,
    }

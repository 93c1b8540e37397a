"""SDD's declaration: columns, options, the GMM fit on the cosine, the
clean-set pools (by image and by text) and the transform."""

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
        params = scorer.fit(cos).get_params()
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

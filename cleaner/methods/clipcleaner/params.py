"""CLIPCleaner's settings and fitted state as params.

The settings are checked here when a scorer is built (:func:`check_settings`,
against :data:`ESTIMATORS` and :data:`SELECTORS`), and the fitted state is
encoded here for ``get_params`` / ``from_params``.

The params must be JSON: the regression goes as plain float lists,
the prompt embeddings as base64 float32 (they are J times the size of the
regression and decimal lists would bloat the file), and the out-of-fold table
travels outside the JSON and is checked on the way back in. Kept apart from
the scorer so the class reads as the method, not as its file format.
"""

from __future__ import annotations

import base64

import numpy as np

from cleaner.methods.clipcleaner.induced import OOF_FIELDS

ESTIMATORS = ("zs", "ind")
SELECTORS = ("consistency", "gmm")


def check_settings(scorer) -> None:
    """Raise ValueError on the first invalid setting of a CLIPCleanerScorer
    (its attributes are the settings), before any data is seen."""
    if scorer.n_classes < 1:
        raise ValueError("n_classes must be >= 1")
    if not 0 < scorer.theta_cons <= 1:
        raise ValueError("theta_cons must be in (0, 1]")
    if not 0 <= scorer.theta_gmm <= 1:
        raise ValueError("theta_gmm must be in [0, 1]")
    if not scorer.temperature > 0:
        raise ValueError("temperature must be > 0")
    if scorer.prompt_aggregate not in ("sum", "mean"):
        raise ValueError("prompt_aggregate must be 'sum' or 'mean'")
    if scorer.induced not in ("oof", "in-sample"):
        raise ValueError("induced must be 'oof' or 'in-sample'")
    if scorer.n_folds < 2:
        raise ValueError("n_folds must be >= 2")
    for name, given, allowed in (
        ("estimators", scorer.estimators, ESTIMATORS),
        ("selectors", scorer.selectors, SELECTORS),
    ):
        if not given or len(set(given)) != len(given) or set(given) - set(allowed):
            raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {given}")
    if scorer.combine not in ("intersection", "union"):
        raise ValueError("combine must be 'intersection' or 'union'")
    if scorer.max_fit_samples is not None and scorer.max_fit_samples < 2:
        raise ValueError("max_fit_samples must be >= 2")


def _b64_f32(a: np.ndarray) -> dict:
    a = np.ascontiguousarray(a, dtype="<f4")
    return {"shape": list(a.shape), "float32_b64": base64.b64encode(a.tobytes()).decode("ascii")}


def _from_b64_f32(d: dict) -> np.ndarray:
    raw = base64.b64decode(d["float32_b64"])
    return np.frombuffer(raw, dtype="<f4").reshape(d["shape"]).astype(np.float32)


def lr_to_json(lr: dict | None) -> dict | None:
    """The induced regression (``classes``, ``coef``, ``intercept``) as lists."""
    if lr is None:
        return None
    return {
        "classes": np.asarray(lr["classes"]).tolist(),
        "coef": np.asarray(lr["coef"]).tolist(),
        "intercept": np.asarray(lr["intercept"]).tolist(),
    }


def lr_from_json(lr: dict | None) -> dict | None:
    """Inverse of :func:`lr_to_json`: int64 classes, float64 weights."""
    if lr is None:
        return None
    return {
        "classes": np.asarray(lr["classes"], dtype=np.int64),
        "coef": np.asarray(lr["coef"], dtype=np.float64),
        "intercept": np.asarray(lr["intercept"], dtype=np.float64),
    }


def prompts_to_json(prompt_emb: np.ndarray | None, class_of_prompt: np.ndarray) -> dict | None:
    """Prompt embeddings (base64 float32) and their classes; None without."""
    if prompt_emb is None:
        return None
    return {"embeddings": _b64_f32(prompt_emb), "class_of_prompt": class_of_prompt.tolist()}


def prompts_from_json(prompts: dict | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Inverse of :func:`prompts_to_json`: (float32 embeddings, int64 classes)."""
    if prompts is None:
        return None, None
    return (
        _from_b64_f32(prompts["embeddings"]),
        np.asarray(prompts["class_of_prompt"], dtype=np.int64),
    )


def checked_oof(oof: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The out-of-fold table's :data:`OOF_FIELDS` as arrays; raises when one
    is missing (a table from elsewhere, or truncated)."""
    missing = set(OOF_FIELDS) - set(oof)
    if missing:
        raise ValueError(f"oof table lacks {sorted(missing)}")
    return {f: np.asarray(oof[f]) for f in OOF_FIELDS}

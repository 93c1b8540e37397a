"""CLIPCleaner's zero-shot estimator: class probabilities from prompts.

Each class scores the (summed or averaged) exp-cosine of its prompts, and
the scores are normalised over classes. A module of its own because it is
used outside the method too (the pre-trained estimator's check in
:mod:`cleaner.estimator.pretrain` imports :func:`zero_shot_probs`).
"""

from __future__ import annotations

import numpy as np

from cleaner.methods.clipcleaner.logprob import _log_softmax

# Zero-shot logits are computed in row blocks of at most this many
# (row, prompt) entries, so memory stays bounded for 1000 classes x 18 prompts.
_ZS_BLOCK = 1 << 22


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def zero_shot_log_probs(
    image_emb: np.ndarray,
    prompt_emb: np.ndarray,
    class_of_prompt: np.ndarray,
    temperature: float = 0.07,
    aggregate: str = "sum",
    n_classes: int | None = None,
) -> np.ndarray:
    """Log of :func:`zero_shot_probs`; see there. Computed without ever
    forming exp(cos / T) unshifted, so small temperatures cannot overflow."""
    if aggregate not in ("sum", "mean"):
        raise ValueError(f"aggregate must be 'sum' or 'mean', got {aggregate!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    x = _unit(image_emb)
    t = _unit(prompt_emb)
    cop = np.asarray(class_of_prompt, dtype=np.int64)
    if cop.shape != (len(t),):
        raise ValueError("class_of_prompt must give one class per prompt embedding")
    k = int(cop.max()) + 1 if n_classes is None else int(n_classes)
    if cop.min() < 0 or cop.max() >= k:
        raise ValueError(f"class_of_prompt values must lie in [0, {k})")
    counts = np.bincount(cop, minlength=k)
    if (counts == 0).any():
        raise ValueError(f"classes without prompts: {np.flatnonzero(counts == 0)[:20].tolist()}")
    # Sort prompts by class so per-class reductions are contiguous slices
    # (np.*.reduceat); column c of the reduced array is then class c.
    order = np.argsort(cop, kind="stable")
    t, cop = t[order], cop[order]
    starts = np.flatnonzero(np.r_[True, cop[1:] != cop[:-1]])
    out = np.empty((len(x), k), dtype=np.float64)
    step = max(1, _ZS_BLOCK // len(t))
    for s in range(0, len(x), step):
        logits = (x[s : s + step] @ t.T) / temperature
        # per-class log-sum-exp, shifted by the class's own max (stable)
        cmax = np.maximum.reduceat(logits, starts, axis=1)
        lse = np.log(np.add.reduceat(np.exp(logits - cmax[:, cop]), starts, axis=1)) + cmax
        if aggregate == "mean":
            lse -= np.log(counts)
        out[s : s + step] = _log_softmax(lse)
    return out


def zero_shot_probs(
    image_emb: np.ndarray,
    prompt_emb: np.ndarray,
    class_of_prompt: np.ndarray,
    temperature: float = 0.07,
    aggregate: str = "sum",
    n_classes: int | None = None,
) -> np.ndarray:
    """CLIP zero-shot class probabilities from several prompts per class.

    Class k scores ``sum_j exp(cos(x, t_j) / temperature)`` over its prompts
    t_j (or the mean, with ``aggregate='mean'``); scores are normalised over
    classes. Summing, as the released code does, gives a class with more
    prompts a prior boost of log(J_k); averaging removes it.

    Parameters
    ----------
    image_emb : np.ndarray
        (n, d) image embeddings (normalised here again, to be safe).
    prompt_emb : np.ndarray
        (P, d) prompt embeddings.
    class_of_prompt : np.ndarray
        (P,) int class of each prompt; every class needs at least one.
    temperature : float, default 0.07
        Softmax temperature on the cosine (CLIPCleaner's 0.07, not CLIP's
        logit scale 100 = 1/0.01).
    aggregate : {'sum', 'mean'}, default 'sum'
    n_classes : int, optional
        K; defaults to ``class_of_prompt.max() + 1``.

    Returns
    -------
    p : np.ndarray
        (n, K) float64, rows sum to 1.
    """
    return np.exp(
        zero_shot_log_probs(
            image_emb, prompt_emb, class_of_prompt, temperature, aggregate, n_classes
        )
    )

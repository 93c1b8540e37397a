"""Planted caption and label noise for shapes-world samples.

Noise is added to finished sample dicts and returns the truth alongside
(``is_noisy``, ``true_caption``, ``true_label``), so it is separate from
generation: the same clean samples can be corrupted at several rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cleaner.worlds.shapes_scene import SHAPES, Scene


def _noisy_count(n: int, fraction: float) -> int:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    return int(round(fraction * n))


def _caption_scene(sample: dict) -> Scene | None:
    """The scene a sample's *current* caption describes, when known."""
    scene = sample.get("scene")
    if isinstance(scene, Scene) and sample["caption"] == sample.get(
        "true_caption", sample["caption"]
    ):
        return scene
    return None


def _conflicts(source: dict, target: dict) -> bool:
    """True when ``source``'s caption would not make ``target`` a clear mismatch.

    Identical text is never allowed. When scenes are known, the caption is
    also refused if every (colour, shape) it names is present in the target
    image: that caption would be at worst incomplete, not wrong.
    """
    text = source["caption"]
    if text == target.get("true_caption", target["caption"]):
        return True
    src_scene, dst_scene = _caption_scene(source), target.get("scene")
    if src_scene is not None and isinstance(dst_scene, Scene):
        return src_scene.combos() <= dst_scene.combos()
    return False


def _derangement(
    samples: Sequence[dict], chosen: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A permutation ``p`` of ``chosen`` so that sample ``chosen[i]`` can take
    the caption of ``chosen[p[i]]`` with no fixed point and no conflict.

    Starts from Sattolo's algorithm (a uniformly random single cycle, hence
    no fixed point) and repairs conflicts by random swaps, each accepted only
    if both positions it touches end up conflict-free.
    """
    k = len(chosen)
    perm = np.arange(k)
    for i in range(k - 1, 0, -1):  # Sattolo: j < i, never j == i
        j = int(rng.integers(i))
        perm[i], perm[j] = perm[j], perm[i]

    def bad(i: int, src: int) -> bool:
        return src == i or _conflicts(samples[chosen[src]], samples[chosen[i]])

    for i in range(k):
        tries = 0
        while bad(i, perm[i]):
            j = int(rng.integers(k))
            if j != i and not bad(i, perm[j]) and not bad(j, perm[i]):
                perm[i], perm[j] = perm[j], perm[i]
            tries += 1
            if tries > 10 * k + 100:
                raise ValueError(
                    "could not find a conflict-free caption derangement; the chosen "
                    "samples' captions are too alike"
                )
    return perm


def add_caption_noise(
    samples: Sequence[dict], fraction: float, seed: int = 0
) -> tuple[list[dict], np.ndarray]:
    """Swap the captions of exactly ``round(fraction * n)`` samples among themselves.

    The swap is a derangement: no noisy sample keeps its own caption, no
    noisy caption is the same text as its sample's true caption, and (for
    generated samples) every noisy caption names at least one colour-shape
    pair that is not in its image. Returns new sample dicts (images shared)
    and a boolean ``is_noisy`` array; ``true_caption`` keeps the truth.
    """
    n = len(samples)
    k = _noisy_count(n, fraction)
    if k == 1:
        raise ValueError(
            "a single caption cannot be deranged; use a fraction giving 0 or >= 2 samples"
        )
    out = [dict(s) for s in samples]
    for s in out:
        s.setdefault("true_caption", s["caption"])
    is_noisy = np.zeros(n, dtype=bool)
    if k == 0:
        return out, is_noisy
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    perm = _derangement(out, chosen, rng)
    new_captions = [out[chosen[p]]["caption"] for p in perm]
    for idx, text in zip(chosen, new_captions, strict=True):
        out[idx]["caption"] = text
    is_noisy[chosen] = True
    return out, is_noisy


def add_label_noise(
    samples: Sequence[dict], fraction: float, n_classes: int = len(SHAPES), seed: int = 0
) -> tuple[list[dict], np.ndarray]:
    """Symmetric label noise on exactly ``round(fraction * n)`` samples.

    Each chosen label is replaced by one of the other ``n_classes - 1``
    classes, uniformly, so a flipped label always differs from ``true_label``.
    Returns new sample dicts and a boolean ``is_noisy`` array.
    """
    if n_classes < 2:
        raise ValueError("label noise needs at least two classes")
    n = len(samples)
    k = _noisy_count(n, fraction)
    out = [dict(s) for s in samples]
    for s in out:
        s.setdefault("true_label", s["label"])
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    offsets = rng.integers(1, n_classes, size=k)  # never 0, so never the true class
    for idx, off in zip(chosen, offsets, strict=True):
        true = int(out[idx]["true_label"])
        if not 0 <= true < n_classes:
            raise ValueError(f"label {true} of sample {idx} is outside 0..{n_classes - 1}")
        out[idx]["label"] = (true + int(off)) % n_classes
    is_noisy = np.zeros(n, dtype=bool)
    is_noisy[chosen] = True
    return out, is_noisy

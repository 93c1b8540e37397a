"""The seeded stream of shapes-world samples: scene, image, caption, label.

Ties the scene, rendering and caption modules together into sample dicts;
each sample depends only on (seed, domain, index). Separate from
:mod:`cleaner.worlds.shapes_shards` because writing shards needs samples but
generating samples must not need webdataset.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from cleaner.worlds.shapes_captions import caption
from cleaner.worlds.shapes_render import render
from cleaner.worlds.shapes_scene import DOMAINS, _check_domain, make_scene


def sample_key(seed: int, index: int, domain: str = "default") -> str:
    """Stable unique key: ``{seed}_{index:07d}`` (``{seed}_shifted_{index:07d}`` when shifted).

    The domain is part of shifted keys so both domains can share one dataset.
    """
    if domain == "default":
        return f"{seed}_{index:07d}"
    return f"{seed}_{domain}_{index:07d}"


def make_sample(
    seed: int, index: int, domain: str = "default", image_size: int = 64, max_objects: int = 3
) -> dict:
    """Sample ``index`` of the stream for ``seed``: same inputs, same sample.

    Each sample has its own generator seeded from (seed, domain, index), so
    sample i does not depend on how many others were made or in which order.
    """
    _check_domain(domain)
    rng = np.random.default_rng([seed, DOMAINS.index(domain), index])
    scene = make_scene(rng, domain, max_objects=max_objects)
    text = caption(scene, rng)
    return {
        "key": sample_key(seed, index, domain),
        "image": render(scene, image_size),
        "caption": text,
        "label": scene.label,
        "scene": scene,
        "true_caption": text,
        "true_label": scene.label,
    }


def iter_samples(
    n: int,
    seed: int = 0,
    domain: str = "default",
    image_size: int = 64,
    start: int = 0,
    max_objects: int = 3,
) -> Iterator[dict]:
    """Lazily yield samples ``start .. start + n - 1`` (for datasets too big for memory)."""
    for index in range(start, start + n):
        yield make_sample(seed, index, domain, image_size, max_objects)


def generate(
    n: int,
    seed: int = 0,
    domain: str = "default",
    image_size: int = 64,
    start: int = 0,
    max_objects: int = 3,
) -> list[dict]:
    """``n`` samples as dicts with ``key``, ``image`` (PIL), ``caption``,
    ``label``, ``scene``, plus ``true_caption`` / ``true_label`` (equal to
    caption / label until noise is added).

    ``max_objects=1`` gives single-object images for a pure classification
    setting.
    """
    return list(iter_samples(n, seed, domain, image_size, start, max_objects))

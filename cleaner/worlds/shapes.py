"""A seeded, procedural "shapes world": image-caption pairs with known truth.

Benchmarks, demos and tests of a mismatch detector need data whose clean /
noisy status is known exactly and that is cheap to make in any amount. Each
image holds one to three coloured shapes on a background; its caption is
built from the same scene, so a clean pair is correct by construction and a
swapped caption is wrong by construction.

Scene vocabulary
----------------
- shapes (also the class names, :data:`SHAPES`): circle, square, triangle,
  star, hexagon, cross, diamond, heart
- object colours (:data:`COLOURS`): red, green, blue, yellow, purple, orange,
  white, black
- sizes: small, large; positions: left, right, top, bottom, centre
- background colours (:data:`BG_COLOURS`) use other words (gray, beige, teal,
  navy, pink, brown, olive, lavender) so a colour word in a caption always
  says which it belongs to.

Domains
-------
``default``: solid, gradient and lightly noisy backgrounds; every
(colour, shape) pair except the held-out ones.

``shifted``: striped, checkered and strongly noisy backgrounds, and *only*
the held-out pairs (:data:`HELD_OUT`), which never occur in ``default``:

    red star, green triangle, blue heart, yellow square,
    purple cross, orange circle, white hexagon, black diamond

Each colour and each shape is held out exactly once, so every shape and every
colour is still seen in ``default``; only their combination is new.

Classification variant: ``label`` is the index in :data:`SHAPES` of the main
object, ``scene.objects[0]``, which is always large (so the main object is
both the first and the largest).

Typical use::

    samples = generate(1000, seed=0)
    samples, noisy = add_caption_noise(samples, 0.2, seed=1)
    paths = write_shards(samples, "data/shapes", shard_size=500)

Layout: this module is the world's public face (``from cleaner.worlds import
shapes`` then ``shapes.generate``, ``shapes.write_shards``, ...); the code
lives in :mod:`.shapes_scene` (vocabulary, scenes), :mod:`.shapes_render`,
:mod:`.shapes_captions`, :mod:`.shapes_samples`, :mod:`.shapes_noise` and
:mod:`.shapes_shards`, and is re-exported here.
"""

from __future__ import annotations

from cleaner.worlds.shapes_captions import caption
from cleaner.worlds.shapes_noise import add_caption_noise, add_label_noise
from cleaner.worlds.shapes_render import render
from cleaner.worlds.shapes_samples import generate, iter_samples, make_sample, sample_key
from cleaner.worlds.shapes_scene import (
    BG_COLOURS,
    COLOURS,
    DEFAULT_BACKGROUNDS,
    DOMAINS,
    HELD_OUT,
    POSITIONS,
    SHAPES,
    SHIFTED_BACKGROUNDS,
    SIZES,
    Background,
    Scene,
    ShapeObject,
    combos,
    make_scene,
)
from cleaner.worlds.shapes_shards import (
    PLANTED_KINDS,
    encode_image,
    planted_samples,
    write_corrupt_samples,
    write_shards,
)

__all__ = [
    "BG_COLOURS",
    "COLOURS",
    "DEFAULT_BACKGROUNDS",
    "DOMAINS",
    "HELD_OUT",
    "PLANTED_KINDS",
    "POSITIONS",
    "SHAPES",
    "SHIFTED_BACKGROUNDS",
    "SIZES",
    "Background",
    "Scene",
    "ShapeObject",
    "add_caption_noise",
    "add_label_noise",
    "caption",
    "combos",
    "encode_image",
    "generate",
    "iter_samples",
    "make_sample",
    "make_scene",
    "planted_samples",
    "render",
    "sample_key",
    "write_corrupt_samples",
    "write_shards",
]

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
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------

SHAPES: list[str] = ["circle", "square", "triangle", "star", "hexagon", "cross", "diamond", "heart"]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 70, 220),
    "yellow": (245, 220, 30),
    "purple": (140, 50, 180),
    "orange": (245, 140, 20),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}

BG_COLOURS: dict[str, tuple[int, int, int]] = {
    "gray": (128, 128, 128),
    "beige": (225, 210, 170),
    "teal": (0, 128, 128),
    "navy": (20, 30, 90),
    "pink": (240, 170, 190),
    "brown": (120, 75, 40),
    "olive": (110, 110, 30),
    "lavender": (200, 180, 230),
}

SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")

# Held out of ``default`` and the only pairs used in ``shifted``: one per
# colour and one per shape (a permutation), see the module docstring.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "star"),
    ("green", "triangle"),
    ("blue", "heart"),
    ("yellow", "square"),
    ("purple", "cross"),
    ("orange", "circle"),
    ("white", "hexagon"),
    ("black", "diamond"),
)

DOMAINS = ("default", "shifted")
DEFAULT_BACKGROUNDS = ("solid", "gradient", "noise")
SHIFTED_BACKGROUNDS = ("stripes", "checkers", "strong_noise")

# Nominal centres (fractions of the image side) and phrases per position.
_CENTRES = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
_POS_PHRASE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# Radii (fractions of the side) chosen so two large shapes at adjacent edge
# positions (distance ~0.35) do not overlap.
_RADIUS = {"small": 0.10, "large": 0.165}
_JITTER = 0.03  # centre jitter, fraction of the side
_MIN_CONTRAST = 100.0  # RGB distance below which an object would vanish into its background
_GRADIENT_DARK = 0.55  # far end of a gradient is the colour scaled by this


def combos(domain: str = "default") -> list[tuple[str, str]]:
    """The (colour, shape) pairs objects of ``domain`` are drawn from."""
    _check_domain(domain)
    if domain == "shifted":
        return list(HELD_OUT)
    held = set(HELD_OUT)
    return [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in held]


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {DOMAINS}")


# --------------------------------------------------------------------------
# Scenes
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ShapeObject:
    """One drawn object. ``cx``, ``cy``, ``radius`` are fractions of the side."""

    shape: str
    colour: str
    size: str
    position: str
    cx: float
    cy: float
    radius: float
    angle: float  # degrees; small, so a square never turns into a diamond


@dataclass(frozen=True)
class Background:
    """How the background is painted; ``seed`` makes its noise reproducible."""

    kind: str  # one of DEFAULT_BACKGROUNDS + SHIFTED_BACKGROUNDS
    colours: tuple[str, ...]  # BG_COLOURS names: one, or two for stripes/checkers
    seed: int
    orientation: str = "horizontal"  # stripes / gradients: horizontal, vertical, diagonal
    period: float = 0.1  # stripes / checkers cell width, fraction of the side

    @property
    def phrase(self) -> str:
        """Caption words for this background, e.g. ``a gray background``."""
        c = self.colours
        if self.kind == "gradient":
            return f"a {c[0]} gradient background"
        if self.kind == "stripes":
            return f"a {c[0]} and {c[1]} striped background"
        if self.kind == "checkers":
            return f"a {c[0]} and {c[1]} checkered background"
        if self.kind == "strong_noise":
            return f"a noisy {c[0]} background"
        return f"a {c[0]} background"  # solid and lightly noisy look the same in words

    def rgb_extremes(self) -> list[tuple[float, float, float]]:
        """Colours that appear in the background, for the contrast check."""
        out = [BG_COLOURS[name] for name in self.colours]
        if self.kind == "gradient":
            out.append(tuple(v * _GRADIENT_DARK for v in out[0]))
        return out


@dataclass(frozen=True)
class Scene:
    """A full scene: objects (``objects[0]`` is the main one) and background."""

    objects: tuple[ShapeObject, ...]
    background: Background
    domain: str = "default"

    @property
    def main(self) -> ShapeObject:
        """The object whose shape is the class label (first, and large)."""
        return self.objects[0]

    @property
    def label(self) -> int:
        """Class index of the main object's shape in :data:`SHAPES`."""
        return SHAPES.index(self.main.shape)

    def combos(self) -> set[tuple[str, str]]:
        """The (colour, shape) pairs present in the scene."""
        return {(o.colour, o.shape) for o in self.objects}

    def to_dict(self) -> dict:
        """JSON-able form, the inverse of :meth:`from_dict`.

        Built by hand: ``dataclasses.asdict`` deep-copies and was the
        slowest step of writing shards.
        """
        bg = dict(vars(self.background), colours=list(self.background.colours))
        return {
            "objects": [dict(vars(o)) for o in self.objects],
            "background": bg,
            "domain": self.domain,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """Rebuild a scene from :meth:`to_dict` output (e.g. a shard's json)."""
        bg = dict(d["background"], colours=tuple(d["background"]["colours"]))
        return cls(
            objects=tuple(ShapeObject(**o) for o in d["objects"]),
            background=Background(**bg),
            domain=d.get("domain", "default"),
        )


def _contrasts(colour: str, background: Background) -> bool:
    """True when ``colour`` stands out against every colour of the background."""
    rgb = COLOURS[colour]
    return all(math.dist(rgb, bg) >= _MIN_CONTRAST for bg in background.rgb_extremes())


@lru_cache(maxsize=1024)
def _visible_combos(
    domain: str, kind: str, colours: tuple[str, ...]
) -> tuple[tuple[str, str], ...]:
    """The domain's (colour, shape) pairs visible on such a background (cached: hot path)."""
    background = Background(kind=kind, colours=colours, seed=0)
    return tuple(cs for cs in combos(domain) if _contrasts(cs[0], background))


def _make_background(rng: np.random.Generator, domain: str) -> Background:
    kinds = DEFAULT_BACKGROUNDS if domain == "default" else SHIFTED_BACKGROUNDS
    kind = kinds[rng.integers(len(kinds))]
    names = list(BG_COLOURS)
    two = kind in ("stripes", "checkers")
    picked = rng.choice(len(names), size=2 if two else 1, replace=False)
    return Background(
        kind=str(kind),
        colours=tuple(names[i] for i in picked),
        seed=int(rng.integers(2**31)),
        orientation=("horizontal", "vertical", "diagonal")[rng.integers(3)],
        period=float(rng.uniform(0.06, 0.15)),
    )


def make_scene(rng: np.random.Generator, domain: str = "default", max_objects: int = 3) -> Scene:
    """Draw a random scene of 1..``max_objects`` objects from ``domain``.

    The main object (``objects[0]``) is always large; the others are small
    or large. Single objects may sit anywhere; with several, objects take
    distinct edge positions (left/right/top/bottom) so they do not overlap.
    Objects in one scene have distinct (colour, shape) pairs, each with
    enough contrast against the background to be visible.
    """
    _check_domain(domain)
    if not 1 <= max_objects <= 4:
        raise ValueError("max_objects must be between 1 and 4 (four edge positions)")
    background = _make_background(rng, domain)
    pool = _visible_combos(domain, background.kind, background.colours)
    n = int(rng.integers(1, max_objects + 1))
    n = min(n, len(pool))
    picked = [pool[i] for i in rng.choice(len(pool), size=n, replace=False)]
    if n == 1:
        positions = [POSITIONS[rng.integers(len(POSITIONS))]]
    else:
        positions = [POSITIONS[i] for i in rng.choice(4, size=n, replace=False)]
    jitter = rng.uniform(-_JITTER, _JITTER, size=(n, 2))
    angles = rng.uniform(-15.0, 15.0, size=n)
    objects = []
    for i, ((colour, shape), position) in enumerate(zip(picked, positions, strict=True)):
        size = "large" if i == 0 else SIZES[rng.integers(2)]
        cx, cy = _CENTRES[position]
        objects.append(
            ShapeObject(
                shape=shape,
                colour=colour,
                size=size,
                position=position,
                cx=float(cx + jitter[i, 0]),
                cy=float(cy + jitter[i, 1]),
                radius=_RADIUS[size],
                angle=float(angles[i]),
            )
        )
    return Scene(objects=tuple(objects), background=background, domain=domain)


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------


def _regular(n: int, radius: float = 1.0, start: float = -90.0) -> np.ndarray:
    """Vertices of a regular n-gon on the unit scale (y grows downwards)."""
    t = np.deg2rad(start + 360.0 * np.arange(n) / n)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _star() -> np.ndarray:
    outer = _regular(5, 1.0)
    inner = _regular(5, 0.45, start=-90.0 + 36.0)
    return np.stack([outer, inner], axis=1).reshape(-1, 2)


def _cross(arm: float = 0.3, length: float = 0.9) -> np.ndarray:
    a, b = arm, length
    return np.array(
        [
            (-a, -b),
            (a, -b),
            (a, -a),
            (b, -a),
            (b, a),
            (a, a),
            (a, b),
            (-a, b),
            (-a, a),
            (-b, a),
            (-b, -a),
            (-a, -a),
        ]
    )


def _heart(points: int = 32) -> np.ndarray:
    # The classic parametric heart, scaled to roughly the unit disc.
    t = np.linspace(0, 2 * np.pi, points, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    pts = np.stack([x, y + 2.5], axis=1) / 16.0
    return pts


# Unit outlines, centred on the origin; circles are drawn as ellipses.
_OUTLINES: dict[str, np.ndarray] = {
    "square": np.array([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": _regular(3, 1.0) + np.array([0.0, 0.15]),  # lower a bit: centroid looks high
    "star": _star(),
    "hexagon": _regular(6, 0.95, start=0.0),
    "cross": _cross(),
    "diamond": np.array([(0.0, -1.0), (0.62, 0.0), (0.0, 1.0), (-0.62, 0.0)]),
    "heart": _heart(),
}


def _outline(obj: ShapeObject, side: float) -> list[tuple[float, float]]:
    """Polygon of ``obj`` in pixel coordinates of a ``side``-pixel canvas."""
    a = math.radians(obj.angle)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    pts = _OUTLINES[obj.shape] @ rot.T * (obj.radius * side)
    pts += (obj.cx * side, obj.cy * side)
    return [tuple(p) for p in pts.tolist()]


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row and column index grids, cached per image size."""
    yy, xx = np.mgrid[0:size, 0:size]
    return yy, xx


def _paint_background(bg: Background, size: int) -> np.ndarray:
    """The background as a (size, size, 3) uint8 array."""
    first = np.asarray(BG_COLOURS[bg.colours[0]], dtype=np.float32)
    yy, xx = _grid(size)
    if bg.kind in ("stripes", "checkers"):
        second = np.asarray(BG_COLOURS[bg.colours[1]], dtype=np.float32)
        cell = max(2, round(bg.period * size))
        if bg.kind == "checkers":
            mask = ((yy // cell) + (xx // cell)) % 2 == 0
        else:
            coord = {"horizontal": yy, "vertical": xx, "diagonal": yy + xx}[bg.orientation]
            mask = (coord // cell) % 2 == 0
        arr = np.where(mask[..., None], first, second)
    elif bg.kind == "gradient":
        coord = {"horizontal": xx, "vertical": yy, "diagonal": (xx + yy) / 2}[bg.orientation]
        t = coord.astype(np.float32) / max(1, size - 1)
        arr = (1.0 - (1.0 - _GRADIENT_DARK) * t)[..., None] * first
    elif bg.kind == "solid":
        return np.broadcast_to(first.astype(np.uint8), (size, size, 3)).copy()
    else:
        arr = np.broadcast_to(first, (size, size, 3))
    if bg.kind in ("noise", "strong_noise"):
        sigma = 8.0 if bg.kind == "noise" else 45.0
        # float32 draws are about twice as fast as float64 ones: this is the hot path.
        noise = np.random.default_rng(bg.seed).standard_normal((size, size, 3), dtype=np.float32)
        arr = arr + sigma * noise
    return np.clip(arr, 0, 255).astype(np.uint8)


def render(scene: Scene, size: int = 64, supersample: int = 2) -> Image.Image:
    """Draw ``scene`` as a ``size`` x ``size`` RGB image.

    Rendering depends only on the scene (background noise has its own seed),
    so the same scene always gives the same pixels. Shapes are drawn at
    ``supersample`` times the size and box-downsampled: antialiased edges
    look more like real photos than PIL's jagged polygons.
    """
    k = max(1, int(supersample))
    img = Image.fromarray(_paint_background(scene.background, size), "RGB")
    if k > 1:
        # Nearest upscaling followed by a box reduce leaves the background as it was.
        img = img.resize((size * k, size * k), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(img)
    side = size * k
    for obj in scene.objects:
        fill = COLOURS[obj.colour]
        if obj.shape == "circle":
            r = obj.radius * side
            x, y = obj.cx * side, obj.cy * side
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        else:
            draw.polygon(_outline(obj, side), fill=fill)
    return img.reduce(k) if k > 1 else img


# --------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------

# {A}, {B}, {C}: object phrases; {PA}.. their position phrases; {REL}: A
# relative to B; {BG}: background phrase. Every template names every
# object's colour and shape, so a caption always matches its whole scene.
_TEMPLATES: dict[int, tuple[str, ...]] = {
    1: (
        "a {A} on {BG}",
        "a {A} {PA}",
        "a {A} {PA} on {BG}",
        "a picture of a {A} on {BG}",
        "there is a {A} {PA}",
    ),
    2: (
        "a {A} {REL} a {B}",
        "a {A} {REL} a {B} on {BG}",
        "a {A} and a {B} on {BG}",
        "a {A} {PA} and a {B} {PB}",
    ),
    3: (
        "a {A}, a {B} and a {C} on {BG}",
        "a {A} {REL} a {B}, and a {C} {PC}",
        "a {A} {PA}, a {B} {PB} and a {C} {PC}",
        "three shapes on {BG}: a {A}, a {B} and a {C}",
    ),
}


_ARTICLE = re.compile(r"\ba (?=[aeiou])")


def _relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b``, from their nominal positions."""
    ax, ay = _CENTRES[a.position]
    bx, by = _CENTRES[b.position]
    dx, dy = bx - ax, by - ay
    if abs(dx) >= abs(dy):  # ties (e.g. left vs top) are true both ways; prefer left/right
        return "left of" if dx > 0 else "right of"
    return "above" if dy > 0 else "below"


def _object_phrase(obj: ShapeObject, with_size: bool) -> str:
    return f"{obj.size} {obj.colour} {obj.shape}" if with_size else f"{obj.colour} {obj.shape}"


def caption(scene: Scene, rng: np.random.Generator) -> str:
    """A compositional caption for ``scene``, with a randomly drawn template.

    Objects are named in a random order (the main object is not always
    first), each with colour and shape and usually size.
    """
    objs = [scene.objects[i] for i in rng.permutation(len(scene.objects))]
    n = min(len(objs), 3)
    templates = _TEMPLATES[n]
    template = templates[rng.integers(len(templates))]
    with_size = rng.random(len(objs)) < 0.8
    fields = {"BG": scene.background.phrase}
    for letter, obj, sized in zip("ABCD", objs, with_size, strict=False):
        fields[letter] = _object_phrase(obj, bool(sized))
        fields["P" + letter] = _POS_PHRASE[obj.position]
    if n >= 2:
        fields["REL"] = _relation(objs[0], objs[1])
    text = template.format(**fields)
    # A fourth object (max_objects=4) is appended so the caption stays complete.
    for obj, sized in zip(objs[3:], with_size[3:], strict=True):
        text += f", and a {_object_phrase(obj, bool(sized))} {_POS_PHRASE[obj.position]}"
    # Templates always write "a"; fix the article before vowels ("an orange star").
    return _ARTICLE.sub("an ", text)


# --------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Noise
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------

# Planted bad samples and the decode status a robust reader should give them.
PLANTED_KINDS: dict[str, str] = {
    "truncated_jpeg": "decode_error",
    "not_an_image": "decode_error",
    "missing_image": "missing_image",
    "missing_caption": "missing_text",
    "empty_caption": "missing_text",
    "non_utf8_caption": "bad_text",
    "bad_label": "bad_label",
}


def encode_image(image: Image.Image, image_format: str = "jpg", quality: int = 90) -> bytes:
    """Encode a PIL image as JPEG (``jpg``) or PNG (``png``) bytes."""
    buf = io.BytesIO()
    if image_format in ("jpg", "jpeg"):
        image.save(buf, format="JPEG", quality=quality)
    elif image_format == "png":
        image.save(buf, format="PNG", compress_level=1)  # speed over size: shards are scratch data
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    return buf.getvalue()


def _metadata(sample: dict) -> dict:
    true_caption = sample.get("true_caption", sample["caption"])
    true_label = int(sample.get("true_label", sample["label"]))
    meta = {
        "uid": sample["key"],
        "label": int(sample["label"]),
        "clean": sample["caption"] == true_caption and int(sample["label"]) == true_label,
        "true_caption": true_caption,
        "true_label": true_label,
    }
    scene = sample.get("scene")
    if isinstance(scene, Scene):
        meta["domain"] = scene.domain
        meta["scene"] = scene.to_dict()
    return meta


def _members(sample: dict, image_format: str, extra_json: bool, quality: int) -> dict:
    """The tar members of one sample, all as bytes."""
    members = {
        "__key__": sample["key"],
        image_format: encode_image(sample["image"], image_format, quality),
        "txt": sample["caption"].encode("utf-8"),
        "cls": str(int(sample["label"])).encode("ascii"),
    }
    if extra_json:
        members["json"] = json.dumps(_metadata(sample)).encode("utf-8")
    return members


def planted_samples(
    seed: int = 0, image_size: int = 64, kinds: Iterable[str] = tuple(PLANTED_KINDS)
) -> list[dict]:
    """Raw tar members (bytes) for deliberately broken samples, one per kind.

    Each starts from a valid generated sample (key ``planted_{seed}_{kind}``)
    and breaks one thing; its json names the kind in ``planted`` and the
    status a robust reader should report in ``expected_status``. Image
    members are always ``jpg`` so ``truncated_jpeg`` is truly a JPEG.
    """
    out = []
    for i, kind in enumerate(kinds):
        if kind not in PLANTED_KINDS:
            raise ValueError(
                f"unknown planted kind {kind!r}; expected one of {list(PLANTED_KINDS)}"
            )
        base = make_sample(seed, 9_000_000 + i, "default", image_size)
        base["key"] = f"planted_{seed}_{kind}"
        members = _members(base, "jpg", extra_json=True, quality=90)
        meta = _metadata(base)
        meta.update(clean=False, planted=kind, expected_status=PLANTED_KINDS[kind])
        members["json"] = json.dumps(meta).encode("utf-8")
        if kind == "truncated_jpeg":
            data = members["jpg"]
            sos = data.find(b"\xff\xda")  # cut inside the scan data, after the headers
            members["jpg"] = data[: sos + (len(data) - sos) // 2]
        elif kind == "not_an_image":
            members["jpg"] = b"this is not an image, just some text bytes\n" * 4
        elif kind == "missing_image":
            del members["jpg"]
        elif kind == "missing_caption":
            del members["txt"]
        elif kind == "empty_caption":
            members["txt"] = b""
        elif kind == "non_utf8_caption":
            members["txt"] = b"a large red \xff\xfe circle \xc3\x28 on a gray background"
        elif kind == "bad_label":
            members["cls"] = b"not-a-number"
        out.append(members)
    return out


def _tar_writer(path: Path):
    import webdataset as wds  # imported lazily: generation alone needs no webdataset

    # Fixed mtime: the same samples give byte-identical shards.
    return wds.TarWriter(str(path), encoder=False, mtime=0)


def write_corrupt_samples(
    path: str | Path,
    seed: int = 0,
    image_size: int = 64,
    kinds: Iterable[str] = tuple(PLANTED_KINDS),
) -> str:
    """Write a shard holding only planted bad samples (see :func:`planted_samples`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _tar_writer(path) as writer:
        for members in planted_samples(seed, image_size, kinds):
            writer.write(members)
    return str(path)


def write_shards(
    samples: Iterable[dict],
    out_dir: str | Path,
    shard_size: int = 1000,
    prefix: str = "",
    image_format: str = "jpg",
    extra_json: bool = True,
    jpeg_quality: int = 90,
    plant_corrupt: bool | Iterable[str] = False,
    planted_seed: int = 0,
) -> list[str]:
    """Write samples to webdataset tars ``{out_dir}/{prefix}{i:05d}.tar``.

    Members per sample: the image (``jpg`` or ``png``), ``txt`` (caption),
    ``cls`` (label as integer text) and, with ``extra_json``, ``json`` with
    ``uid``, ``label``, ``clean``, ``true_caption``, ``true_label`` (and the
    scene). ``samples`` may be a generator; it is consumed once.
    ``plant_corrupt`` (True, or a list of :data:`PLANTED_KINDS`) appends
    planted bad samples to the last shard. Returns the shard paths.
    """
    if image_format == "jpeg":
        image_format = "jpg"
    if shard_size < 1:
        raise ValueError("shard_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: list[str] = []
    writer = None
    count = 0
    image_size = 64  # planted samples match the size of the real ones
    try:
        for sample in samples:
            if writer is None or count == shard_size:
                if writer is not None:
                    writer.close()
                path = out / f"{prefix}{len(paths):05d}.tar"
                writer = _tar_writer(path)
                paths.append(str(path))
                count = 0
            writer.write(_members(sample, image_format, extra_json, jpeg_quality))
            image_size = sample["image"].size[0]
            count += 1
        if plant_corrupt:
            kinds = tuple(PLANTED_KINDS) if plant_corrupt is True else tuple(plant_corrupt)
            if writer is None:  # no samples at all: the planted ones get a shard of their own
                path = out / f"{prefix}{0:05d}.tar"
                writer = _tar_writer(path)
                paths.append(str(path))
            for members in planted_samples(planted_seed, image_size, kinds):
                writer.write(members)
    finally:
        if writer is not None:
            writer.close()
    return paths

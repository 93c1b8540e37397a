"""The shapes world's vocabulary and scenes: what an image contains.

Words (shapes, colours, sizes, positions, backgrounds), the two domains and
their held-out (colour, shape) pairs, the scene dataclasses and the seeded
:func:`make_scene`. Rendering, captions and noise all read scenes, so this is
the module the other ``shapes_*`` modules build on; see
:mod:`cleaner.worlds.shapes` for the world as a whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

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

# Nominal centres (fractions of the image side) per position.
_CENTRES = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
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

"""Rendering a shapes-world scene to pixels.

Kept apart from the scenes because it is the one step that touches PIL
drawing and per-pixel numpy work (the hot path of generating data): unit
outlines of the shapes, the painted backgrounds, and :func:`render`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from cleaner.worlds.shapes_scene import (
    _GRADIENT_DARK,
    BG_COLOURS,
    COLOURS,
    Background,
    Scene,
    ShapeObject,
)


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

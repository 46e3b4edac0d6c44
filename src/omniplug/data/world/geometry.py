"""Exact pixel geometry of every shape and composite part.

A pixel (col, row) belongs to a primitive when its centre (col + 0.5, row + 0.5) lies inside
it (no anti-aliasing). Object centres are integer pixel-corner coordinates, so each
(category, size, image size) has one fixed bitmap ("template") that is only translated:
the renderer pastes templates and the analyser fits the very same templates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .vocab import COMPOSITE_PARTS, COMPOSITES, REFERENCE_SIZE, SHAPES, SIZE_PIXELS


@dataclass(frozen=True, eq=False)
class Template:
    """A boolean bitmap placed relative to an object centre (x, y).

    It covers rows ``y + dy .. y + dy + h - 1`` and columns ``x + dx .. x + dx + w - 1``.
    """

    part: str | None  # None for simple shapes; the part name for composite parts
    mask: np.ndarray  # (h, w) bool, read-only
    dx: int
    dy: int

    @property
    def height(self) -> int:
        return int(self.mask.shape[0])

    @property
    def width(self) -> int:
        return int(self.mask.shape[1])

    @property
    def area(self) -> int:
        return int(self.mask.sum())


# ---- primitives, in "unit" coordinates; y grows downwards -------------------------------


def _inside_polygon(px: np.ndarray, py: np.ndarray, pts: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(pts)
    for i in range(n):
        x1, y1 = pts[i]
        x2, y2 = pts[(i + 1) % n]
        crosses = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= crosses & (px < x_at)
    return inside


def _star_points(outer: float, inner: float, shift: float) -> list[tuple[float, float]]:
    pts = []
    for k in range(10):
        r = outer if k % 2 == 0 else inner
        a = -math.pi / 2 + k * math.pi / 5
        pts.append((r * math.cos(a), r * math.sin(a) + shift))
    return pts


def _hexagon_points() -> list[tuple[float, float]]:
    return [(math.cos(k * math.pi / 3), math.sin(k * math.pi / 3)) for k in range(6)]


# Simple shapes live in the unit box [-1, 1]^2 and are scaled by half the size in pixels.
_SHAPE_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
    "triangle": [(0.0, -1.0), (1.0, 0.85), (-1.0, 0.85)],
    "star": _star_points(1.08, 0.56, 0.103),
    "hexagon": _hexagon_points(),
}

# Composite parts in reference pixels (64x64 canvas) relative to the composite centre.
# ("rect", x0, y0, x1, y1) | ("circle", cx, cy, r) | ("poly", [(x, y), ...])
_COMPOSITE_PRIMITIVES: dict[str, tuple[tuple[str, tuple], ...]] = {
    "house": (
        ("wall", ("rect", -8.0, -2.0, 8.0, 8.0)),
        ("door", ("rect", -2.0, 2.0, 2.0, 8.0)),
        ("roof", ("poly", [(-10.0, -2.0), (0.0, -10.0), (10.0, -2.0)])),
    ),
    "tree": (
        ("trunk", ("rect", -2.0, 4.0, 2.0, 10.0)),
        ("crown", ("circle", 0.0, -3.0, 7.0)),
    ),
    "car": (
        ("body", ("poly", [(-10.0, -3.0), (-6.0, -3.0), (-6.0, -8.0), (5.0, -8.0), (5.0, -3.0),
                           (10.0, -3.0), (10.0, 3.0), (-10.0, 3.0)])),
        ("wheel", ("circle", -6.0, 6.0, 3.0)),
        ("wheel", ("circle", 6.0, 6.0, 3.0)),
    ),
}


def _primitive_extent(prim: tuple) -> tuple[float, float, float, float]:
    kind = prim[0]
    if kind == "rect":
        return prim[1], prim[2], prim[3], prim[4]
    if kind == "circle":
        _, cx, cy, r = prim
        return cx - r, cy - r, cx + r, cy + r
    xs = [p[0] for p in prim[1]]
    ys = [p[1] for p in prim[1]]
    return min(xs), min(ys), max(xs), max(ys)


def _inside_primitive(prim: tuple, px: np.ndarray, py: np.ndarray) -> np.ndarray:
    kind = prim[0]
    if kind == "rect":
        _, x0, y0, x1, y1 = prim
        return (px >= x0) & (px <= x1) & (py >= y0) & (py <= y1)
    if kind == "circle":
        _, cx, cy, r = prim
        return (px - cx) ** 2 + (py - cy) ** 2 <= r * r
    return _inside_polygon(px, py, prim[1])


def _rasterise(prim: tuple, scale: float, part: str | None) -> Template:
    """Rasterise a primitive given in units where one unit is ``scale`` pixels."""
    x0, y0, x1, y1 = _primitive_extent(prim)
    c0, c1 = math.floor(x0 * scale) - 1, math.ceil(x1 * scale) + 1
    r0, r1 = math.floor(y0 * scale) - 1, math.ceil(y1 * scale) + 1
    cols = (np.arange(c0, c1 + 1) + 0.5) / scale
    rows = (np.arange(r0, r1 + 1) + 0.5) / scale
    px, py = np.meshgrid(cols, rows)
    mask = _inside_primitive(prim, px, py)
    if not mask.any():
        raise ValueError(f"primitive {prim!r} is empty at scale {scale}; use a larger image size")
    rr = np.flatnonzero(mask.any(axis=1))
    cc = np.flatnonzero(mask.any(axis=0))
    crop = np.ascontiguousarray(mask[rr[0]: rr[-1] + 1, cc[0]: cc[-1] + 1])
    crop.setflags(write=False)
    return Template(part=part, mask=crop, dx=int(c0 + cc[0]), dy=int(r0 + rr[0]))


def shape_pixels(size: str, image_size: int) -> int:
    """Bounding-square side in pixels of a simple shape of ``size`` (always even)."""
    if size not in SIZE_PIXELS:
        raise ValueError(f"unknown size {size!r}; available: {', '.join(SIZE_PIXELS)}")
    return max(4, 2 * round(SIZE_PIXELS[size] * image_size / REFERENCE_SIZE / 2))


@lru_cache(maxsize=None)
def object_templates(category: str, size: str, image_size: int) -> tuple[Template, ...]:
    """Templates of an object: one for a simple shape, one per part (in drawing order) for a composite."""
    if category in SHAPES:
        half = shape_pixels(size, image_size) / 2
        prim: tuple = ("circle", 0.0, 0.0, 1.0) if category == "circle" else ("poly", _SHAPE_POLYGONS[category])
        return (_rasterise(prim, half, None),)
    if category in COMPOSITES:
        scale = image_size / REFERENCE_SIZE
        temps = tuple(_rasterise(prim, scale, part) for part, prim in _COMPOSITE_PRIMITIVES[category])
        assert tuple(dict.fromkeys(t.part for t in temps)) == COMPOSITE_PARTS[category]
        return temps
    raise ValueError(f"unknown object category {category!r}; available: {', '.join(SHAPES + COMPOSITES)}")


@lru_cache(maxsize=None)
def object_extent(category: str, size: str, image_size: int) -> tuple[int, int, int, int]:
    """(dx0, dy0, dx1, dy1): inclusive pixel offsets of the object's footprint around its centre."""
    temps = object_templates(category, size, image_size)
    return (min(t.dx for t in temps), min(t.dy for t in temps),
            max(t.dx + t.width - 1 for t in temps), max(t.dy + t.height - 1 for t in temps))


def paste(template: Template, *, x: int, y: int, height: int, width: int) -> np.ndarray:
    """Full-canvas boolean mask of ``template`` centred at (x, y); clipped at the borders."""
    out = np.zeros((height, width), dtype=bool)
    r0, c0 = y + template.dy, x + template.dx
    r1, c1 = r0 + template.height, c0 + template.width
    rr0, cc0 = max(r0, 0), max(c0, 0)
    rr1, cc1 = min(r1, height), min(c1, width)
    if rr0 < rr1 and cc0 < cc1:
        out[rr0:rr1, cc0:cc1] = template.mask[rr0 - r0: rr1 - r0, cc0 - c0: cc1 - c0]
    return out

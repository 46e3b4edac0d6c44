"""Typed scene values and seeded scene sampling.

A :class:`Scene` is the complete ground truth of one image: stuff layout plus objects in
depth order (back to front). Scene ``index`` of split ``split`` draws its randomness only
from ``(seed, split, index, stream)``, so any scene can be regenerated on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .geometry import object_extent, object_templates, paste
from .vocab import (
    COLOURS, COMPOSITE_SIZE, COMPOSITES, DEFAULT_HOLDOUT, SHAPES, SIZES, SPLITS, validate_holdout,
)

# Stable integer codes folded into the RNG seed; never reorder.
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2, "holdout": 3}
_STREAM_CODES = {"scene": 0, "language": 1, "generation": 2, "editing": 3, "clip": 4}


@dataclass(frozen=True)
class WorldConfig:
    """Everything that shapes a split besides (seed, split, n). Defaults live here only."""

    size: int = 64
    min_objects: int = 2
    max_objects: int = 6
    composite_prob: float = 0.25
    water_prob: float = 0.5
    min_visible: float = 0.75  # each object keeps at least this fraction of its pixels visible
    min_part_visible: float = 0.6  # each composite part likewise
    gen_min_objects: int = 1  # scenes behind generation.jsonl are simpler
    gen_max_objects: int = 3
    holdout: tuple[tuple[str, str], ...] = DEFAULT_HOLDOUT

    def __post_init__(self) -> None:
        if self.size < 48:
            raise ValueError(f"world image size must be >= 48 pixels (got {self.size}): below that small circles, "
                             "squares and hexagons rasterise to the same few pixels")
        if self.max_objects > 100:
            raise ValueError(f"max_objects must be <= 100 (got {self.max_objects}); annotation ids reserve 1000 per image")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}..{self.max_objects}")
        if not 1 <= self.gen_min_objects <= self.gen_max_objects:
            raise ValueError("need 1 <= gen_min_objects <= gen_max_objects")
        object.__setattr__(self, "holdout", validate_holdout(tuple(tuple(c) for c in self.holdout)))


@dataclass(frozen=True)
class SceneObject:
    """One object. ``x, y``: integer centre in pixel-corner coordinates (pixel (c, r) has centre (c+.5, r+.5))."""

    id: int
    category: str  # a shape ("circle", ...) or a composite ("house", ...)
    colour: str | None  # None for composites (their parts have fixed colours)
    size: str
    x: int
    y: int

    @property
    def is_composite(self) -> bool:
        return self.category in COMPOSITES

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "category": self.category, "colour": self.colour, "size": self.size,
                "centre": [self.x, self.y]}

    @staticmethod
    def from_json(d: dict[str, Any]) -> "SceneObject":
        return SceneObject(id=int(d["id"]), category=str(d["category"]), colour=d.get("colour"),
                           size=str(d["size"]), x=int(d["centre"][0]), y=int(d["centre"][1]))


@dataclass(frozen=True)
class Water:
    """An elliptical water patch inside the grass: centre (cx, cy) and radii, in pixels."""

    cx: int
    cy: int
    rx: int
    ry: int


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    horizon: int  # rows [0, horizon) are sky, the rest grass (and water)
    water: Water | None
    objects: tuple[SceneObject, ...]  # back to front
    split: str
    index: int
    seed: int
    holdout: tuple[tuple[str, str], ...] = field(default=DEFAULT_HOLDOUT)

    def object(self, object_id: int) -> SceneObject:
        for o in self.objects:
            if o.id == object_id:
                return o
        raise KeyError(f"scene {self.index} has no object {object_id}; ids: {[o.id for o in self.objects]}")

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.width, "height": self.height, "split": self.split, "index": self.index,
            "seed": self.seed, "horizon": self.horizon,
            "water": None if self.water is None else [self.water.cx, self.water.cy, self.water.rx, self.water.ry],
            "holdout": [list(c) for c in self.holdout],
            "objects": [o.to_json() for o in self.objects],
        }

    @staticmethod
    def from_json(d: dict[str, Any]) -> "Scene":
        w = d.get("water")
        return Scene(width=int(d["width"]), height=int(d["height"]), horizon=int(d["horizon"]),
                     water=None if w is None else Water(cx=w[0], cy=w[1], rx=w[2], ry=w[3]),
                     objects=tuple(SceneObject.from_json(o) for o in d["objects"]),
                     split=str(d["split"]), index=int(d["index"]), seed=int(d["seed"]),
                     holdout=tuple((str(a), str(b)) for a, b in d.get("holdout", DEFAULT_HOLDOUT)))


def scene_rng(*, seed: int, split: str, index: int, stream: str = "scene") -> np.random.Generator:
    """The RNG of one scene: a pure function of (seed, split, index, stream)."""
    if split not in _SPLIT_CODES:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    if seed < 0 or index < 0:
        raise ValueError(f"seed and index must be >= 0 (got seed={seed}, index={index})")
    return np.random.default_rng([seed, _SPLIT_CODES[split], index, _STREAM_CODES[stream]])


# ---- placement constraints ---------------------------------------------------------------

_EIGHT = np.ones((3, 3), dtype=bool)


def object_part_masks(obj: SceneObject, *, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Full (amodal) canvas mask of each template of ``obj`` (one per part for composites)."""
    return tuple(paste(t, x=obj.x, y=obj.y, height=height, width=width)
                 for t in object_templates(obj.category, obj.size, width))


def colour_key(obj: SceneObject) -> str:
    """Objects with the same key share pixel colours and must never touch."""
    return obj.category if obj.is_composite else str(obj.colour)


def _grow(mask: np.ndarray) -> np.ndarray:
    """8-neighbour dilation by one pixel."""
    rows = mask.copy()
    rows[1:] |= mask[:-1]
    rows[:-1] |= mask[1:]
    out = rows.copy()
    out[:, 1:] |= rows[:, :-1]
    out[:, :-1] |= rows[:, 1:]
    return out


def _connected(mask: np.ndarray) -> bool:
    return ndimage.label(mask, structure=_EIGHT)[1] == 1


@dataclass
class _Placed:
    obj: SceneObject
    own_parts: tuple[np.ndarray, ...]  # each part minus the object's own later parts (the wall minus the door)
    full: np.ndarray
    visible_parts: list[np.ndarray]  # own_parts minus everything drawn in front so far


def _still_valid(p: _Placed, cover: np.ndarray, config: WorldConfig) -> list[np.ndarray] | None:
    """Visible part masks of an already placed object after ``cover`` is drawn on top, or None if too occluded."""
    if not (p.full & cover).any():
        return p.visible_parts
    new_parts = [v & ~cover for v in p.visible_parts]
    visible = np.logical_or.reduce(new_parts)
    if visible.sum() < config.min_visible * p.full.sum() or not _connected(visible):
        return None
    if p.obj.is_composite:
        for part, vis in zip(p.own_parts, new_parts):
            if vis.sum() < config.min_part_visible * part.sum() or not _connected(vis):
                return None
    return new_parts


def inside_canvas(obj: SceneObject, size: int) -> bool:
    x0, y0, x1, y1 = object_extent(obj.category, obj.size, size)
    return obj.x + x0 >= 0 and obj.y + y0 >= 0 and obj.x + x1 < size and obj.y + y1 < size


def _try_place(placed: list[_Placed], obj: SceneObject, config: WorldConfig) -> bool:
    h = w = config.size
    if not inside_canvas(obj, w):
        return False
    parts = object_part_masks(obj, height=h, width=w)
    full = np.logical_or.reduce(parts)
    grown = _grow(full)
    key = colour_key(obj)
    updates = []
    for p in placed:
        if colour_key(p.obj) == key and (grown & p.full).any():
            return False
        vis = _still_valid(p, full, config)
        if vis is None:
            return False
        updates.append(vis)
    for p, vis in zip(placed, updates):
        p.visible_parts = vis
    # Parts inside one composite may overlap (the door sits on the wall): later parts win.
    visible_parts = []
    for k, part in enumerate(parts):
        later = np.logical_or.reduce(parts[k + 1:]) if k + 1 < len(parts) else np.zeros_like(part)
        visible_parts.append(part & ~later)
    placed.append(_Placed(obj=obj, own_parts=tuple(visible_parts), full=full, visible_parts=visible_parts))
    return True


def _sample_kind(rng: np.random.Generator, config: WorldConfig, *, force_holdout: bool) -> tuple[str, str | None, str]:
    if force_holdout:
        colour, shape = config.holdout[int(rng.integers(len(config.holdout)))]
        return shape, colour, SIZES[int(rng.integers(len(SIZES)))]
    if rng.random() < config.composite_prob:
        return COMPOSITES[int(rng.integers(len(COMPOSITES)))], None, COMPOSITE_SIZE
    shapes = [s for s in SHAPES if any((c, s) not in config.holdout for c in COLOURS)]
    shape = shapes[int(rng.integers(len(shapes)))]
    colours = [c for c in COLOURS if (c, shape) not in config.holdout]
    return shape, colours[int(rng.integers(len(colours)))], SIZES[int(rng.integers(len(SIZES)))]


def sample_scene(*, config: WorldConfig, seed: int, split: str, index: int,
                 stream: str = "scene", n_objects: tuple[int, int] | None = None) -> Scene:
    """Sample scene ``index`` of ``split``. ``stream="generation"`` gives the simpler generation scenes."""
    rng = scene_rng(seed=seed, split=split, index=index, stream=stream)
    if split == "holdout" and not config.holdout:
        raise ValueError("split 'holdout' needs a non-empty hold-out list (WorldConfig.holdout / --holdout)")
    size = config.size
    lo, hi = n_objects or ((config.gen_min_objects, config.gen_max_objects) if stream == "generation"
                           else (config.min_objects, config.max_objects))
    horizon = int(round(size * rng.uniform(0.3, 0.5)))
    water = None
    if rng.random() < config.water_prob:
        rx = int(rng.integers(size // 8, size // 4 + 1))
        ry = int(rng.integers(size // 16, size // 10 + 1))
        cy = int(rng.integers(horizon + ry + 2, size - ry - 1))
        water = Water(cx=int(rng.integers(rx, size - rx)), cy=cy, rx=rx, ry=ry)
    n = int(rng.integers(lo, hi + 1))
    placed: list[_Placed] = []
    for k in range(n):
        force = split == "holdout" and k == 0
        for _attempt in range(40):
            category, colour, obj_size = _sample_kind(rng, config, force_holdout=force)
            x0, y0, x1, y1 = object_extent(category, obj_size, size)
            x = int(rng.integers(-x0, size - x1))
            y = int(rng.integers(-y0, size - y1))
            obj = SceneObject(id=len(placed), category=category, colour=colour, size=obj_size, x=x, y=y)
            if _try_place(placed, obj, config):
                break
    # Depth order is placement order; ids are 0..n-1 in that order.
    return Scene(width=size, height=size, horizon=horizon, water=water, objects=tuple(p.obj for p in placed),
                 split=split, index=index, seed=seed, holdout=config.holdout)


def check_scene(scene: Scene, config: WorldConfig) -> bool:
    """True when ``scene`` satisfies every placement constraint (used for edited scenes)."""
    placed: list[_Placed] = []
    for obj in scene.objects:
        if obj.colour is not None and (obj.colour, obj.category) in config.holdout and scene.split != "holdout":
            return False
        if not _try_place(placed, obj, config):
            return False
    return True

"""Rasterise a :class:`Scene` into an RGB image plus exact stuff / object / part masks."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .geometry import object_extent, object_templates
from .scene import Scene, SceneObject, inside_canvas, object_part_masks
from .vocab import CATEGORY_ID, COLOURS, PART_COLOURS, PARTS, SEMANTIC_CLASSES, STUFF, STUFF_COLOURS

# Channels of Rendering.dense_labels() and their class names (index = label value).
DENSE_CHANNELS: dict[str, tuple[str, ...]] = {
    "category": SEMANTIC_CLASSES,  # what semantic_map() holds
    "part": ("none",) + tuple(PARTS),  # "none": stuff or a simple shape
    "colour": ("none",) + tuple(COLOURS),  # "none": stuff or a composite (its parts have fixed colours)
}

assert all(CATEGORY_ID[name] == i for i, name in enumerate(SEMANTIC_CLASSES) if i > 0), \
    "semantic label values must equal category ids"

# Panoptic segment ids: stuff segments use their category id, things THING_ID_OFFSET + object id.
THING_ID_OFFSET = 100

Box = tuple[int, int, int, int]  # COCO xywh, integer pixels: columns x..x+w-1, rows y..y+h-1


def mask_bbox(mask: np.ndarray) -> Box:
    """COCO ``[x, y, w, h]`` of a non-empty boolean mask (w, h count pixels)."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask_bbox of an empty mask")
    return int(cols[0]), int(rows[0]), int(cols[-1] - cols[0] + 1), int(rows[-1] - rows[0] + 1)


@dataclass(frozen=True)
class PartAnnotation:
    name: str
    index: int  # position among the object's parts (a car has body, wheel, wheel)
    bbox: Box  # of the visible pixels
    area: int  # visible pixels
    full_area: int  # pixels if nothing occluded it


@dataclass(frozen=True)
class ObjectAnnotation:
    object: SceneObject
    bbox: Box  # of the visible pixels
    area: int
    full_bbox: Box  # amodal
    full_area: int
    parts: tuple[PartAnnotation, ...]  # empty for simple shapes

    @property
    def visible_fraction(self) -> float:
        return self.area / self.full_area

    @property
    def occluded(self) -> bool:
        return self.area < self.full_area


@dataclass(frozen=True)
class StuffAnnotation:
    name: str
    bbox: Box
    area: int


@dataclass(frozen=True, eq=False)
class Rendering:
    """Image and masks of one scene. Object ``i`` below is the position in ``scene.objects``."""

    scene: Scene
    image: np.ndarray  # (H, W, 3) uint8
    background: np.ndarray  # (H, W) uint8 stuff category id under everything (amodal stuff)
    owner: np.ndarray  # (H, W) int16: visible object position, -1 where stuff shows
    part_owner: np.ndarray  # (H, W) int16: part position within the visible object, -1 otherwise
    objects: tuple[ObjectAnnotation, ...]
    stuff: tuple[StuffAnnotation, ...]  # visible stuff regions present in the image

    def position(self, object_id: int) -> int:
        for i, o in enumerate(self.scene.objects):
            if o.id == object_id:
                return i
        raise KeyError(f"scene {self.scene.index} has no object id {object_id}")

    def visible_mask(self, i: int) -> np.ndarray:
        return self.owner == i

    def full_mask(self, i: int) -> np.ndarray:
        """Amodal mask of object ``i`` (every pixel it would cover with nothing in front)."""
        return np.logical_or.reduce(self.part_full_masks(i))

    def part_full_masks(self, i: int) -> tuple[np.ndarray, ...]:
        """Amodal mask of each template of object ``i`` (one per part for composites)."""
        return object_part_masks(self.scene.objects[i], height=self.scene.height, width=self.scene.width)

    def part_mask(self, i: int, part: str) -> np.ndarray:
        """Visible pixels of every part called ``part`` of object ``i`` (both wheels of a car)."""
        idx = [k for k, p in enumerate(self.objects[i].parts) if p.name == part]
        if not idx:
            raise KeyError(f"object {i} ({self.scene.objects[i].category}) has no part {part!r}")
        return (self.owner == i) & np.isin(self.part_owner, idx)

    def stuff_mask(self, name: str) -> np.ndarray:
        return (self.owner < 0) & (self.background == CATEGORY_ID[name])

    def semantic_map(self) -> np.ndarray:
        """uint8 labels indexing ``SEMANTIC_CLASSES`` (stuff, shape or composite; 0 never occurs)."""
        lut = np.array([CATEGORY_ID[o.category] for o in self.scene.objects] + [0], dtype=np.uint8)
        return np.where(self.owner >= 0, lut[self.owner], self.background).astype(np.uint8)

    def dense_labels(self) -> np.ndarray:
        """(3, H, W) int16: per pixel its category, part and colour (``DENSE_CHANNELS``), for dense
        perception heads; one factorised label per property, so unseen colour-shape pairs stay describable."""
        part_of = np.zeros(self.owner.shape, dtype=np.int16)
        colour_of = np.zeros(self.owner.shape, dtype=np.int16)
        for i, (obj, ann) in enumerate(zip(self.scene.objects, self.objects)):
            mine = self.owner == i
            if obj.is_composite:
                for k, part in enumerate(ann.parts):
                    part_of[mine & (self.part_owner == k)] = DENSE_CHANNELS["part"].index(part.name)
            else:
                colour_of[mine] = DENSE_CHANNELS["colour"].index(str(obj.colour))
        return np.stack([self.semantic_map().astype(np.int16), part_of, colour_of])

    def panoptic_ids(self) -> np.ndarray:
        """int32 segment id per pixel: stuff category id, or THING_ID_OFFSET + object id."""
        lut = np.array([THING_ID_OFFSET + o.id for o in self.scene.objects] + [0], dtype=np.int32)
        return np.where(self.owner >= 0, lut[self.owner], self.background.astype(np.int32))


def _footprint_bbox(obj: SceneObject, image_size: int) -> Box:
    """Amodal bbox straight from the template geometry (objects never leave the canvas)."""
    x0, y0, x1, y1 = object_extent(obj.category, obj.size, image_size)
    return obj.x + x0, obj.y + y0, x1 - x0 + 1, y1 - y0 + 1


def _stuff_layout(scene: Scene) -> np.ndarray:
    h, w = scene.height, scene.width
    bg = np.full((h, w), CATEGORY_ID["grass"], dtype=np.uint8)
    bg[: scene.horizon] = CATEGORY_ID["sky"]
    if scene.water is not None:
        wt = scene.water
        rows = np.arange(h)[:, None] + 0.5 - wt.cy
        cols = np.arange(w)[None, :] + 0.5 - wt.cx
        inside = (cols / wt.rx) ** 2 + (rows / wt.ry) ** 2 <= 1.0
        bg[inside & (np.arange(h)[:, None] >= scene.horizon)] = CATEGORY_ID["water"]
    return bg


# Colour table: stuff colours at their category ids, then object colours, then part colours.
_COLOUR_NAMES = list(STUFF) + list(COLOURS) + list(PART_COLOURS)
_PALETTE = np.zeros((256, 3), dtype=np.uint8)
_COLOUR_CODE: dict[str, int] = {}
for _name in _COLOUR_NAMES:
    _COLOUR_CODE[_name] = CATEGORY_ID[_name] if _name in STUFF else 16 + len(_COLOUR_CODE)
    _PALETTE[_COLOUR_CODE[_name]] = ({**STUFF_COLOURS, **COLOURS, **PART_COLOURS})[_name]


def render_scene(scene: Scene) -> Rendering:
    h, w = scene.height, scene.width
    if h != w:
        raise ValueError(f"world scenes are square; got {w}x{h}")
    background = _stuff_layout(scene)
    colour = background.copy()  # colour code per pixel, turned into RGB at the end
    owner = np.full((h, w), -1, dtype=np.int16)
    part_owner = np.full((h, w), -1, dtype=np.int16)
    for i, obj in enumerate(scene.objects):
        if not inside_canvas(obj, w):
            raise ValueError(f"object {obj.id} of scene {scene.index} ({obj.size} {obj.category} at {obj.x},{obj.y}) "
                             f"leaves the {w}x{h} canvas; scenes from sample_scene never do")
        for k, t in enumerate(object_templates(obj.category, obj.size, w)):
            win = (slice(obj.y + t.dy, obj.y + t.dy + t.height), slice(obj.x + t.dx, obj.x + t.dx + t.width))
            code = _COLOUR_CODE[str(t.part) if obj.is_composite else str(obj.colour)]
            colour[win][t.mask] = code
            owner[win][t.mask] = i
            part_owner[win][t.mask] = k if obj.is_composite else -1
    objects = []
    for i, obj in enumerate(scene.objects):
        x, y, bw, bh = full_bbox = _footprint_bbox(obj, w)
        win = (slice(y, y + bh), slice(x, x + bw))
        vis = owner[win] == i
        area = int(vis.sum())
        if area == 0:
            raise ValueError(f"object {obj.id} of scene {scene.index} is fully hidden; the scene is invalid")
        part_areas = _part_full_areas(obj.category, obj.size, w)
        full_area = sum(part_areas)
        bbox = full_bbox if area == full_area else _shift(mask_bbox(vis), x, y)
        parts = ()
        if obj.is_composite:
            po = part_owner[win]
            plist = []
            for k, t in enumerate(object_templates(obj.category, obj.size, w)):
                pv = vis & (po == k)
                pa = int(pv.sum())
                plist.append(PartAnnotation(name=str(t.part), index=k, bbox=_shift(mask_bbox(pv), x, y) if pa else (0, 0, 0, 0),
                                            area=pa, full_area=part_areas[k]))
            parts = tuple(plist)
        objects.append(ObjectAnnotation(object=obj, bbox=bbox, area=area, full_bbox=full_bbox, full_area=full_area,
                                        parts=parts))
    stuff = []
    for name in STUFF:
        m = (owner < 0) & (background == CATEGORY_ID[name])
        if m.any():
            stuff.append(StuffAnnotation(name=name, bbox=mask_bbox(m), area=int(m.sum())))
    image = _PALETTE[colour]
    for arr in (image, background, owner, part_owner):
        arr.setflags(write=False)
    return Rendering(scene=scene, image=image, background=background, owner=owner, part_owner=part_owner,
                     objects=tuple(objects), stuff=tuple(stuff))


def _shift(b: Box, dx: int, dy: int) -> Box:
    return b[0] + dx, b[1] + dy, b[2], b[3]


@lru_cache(maxsize=None)
def _part_full_areas(category: str, size: str, image_size: int) -> tuple[int, ...]:
    """Pixels of each template not covered by the object's own later parts (the wall minus the door)."""
    temps = object_templates(category, size, image_size)
    x0, y0, x1, y1 = object_extent(category, size, image_size)
    canvas = np.full((y1 - y0 + 1, x1 - x0 + 1), -1, dtype=np.int16)
    for j, t in enumerate(temps):
        canvas[t.dy - y0: t.dy - y0 + t.height, t.dx - x0: t.dx - x0 + t.width][t.mask] = j
    return tuple(int((canvas == k).sum()) for k in range(len(temps)))

"""Rasterise a :class:`Scene` into an RGB image plus exact stuff / object / part masks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import object_templates
from .scene import Scene, SceneObject, object_part_masks
from .vocab import CATEGORY_ID, COLOURS, PART_COLOURS, SEMANTIC_CLASSES, STUFF, STUFF_COLOURS

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
    full_masks: tuple[np.ndarray, ...]  # amodal mask per object
    part_full_masks: tuple[tuple[np.ndarray, ...], ...]  # amodal mask per object part
    objects: tuple[ObjectAnnotation, ...]
    stuff: tuple[StuffAnnotation, ...]  # visible stuff regions present in the image

    def position(self, object_id: int) -> int:
        for i, o in enumerate(self.scene.objects):
            if o.id == object_id:
                return i
        raise KeyError(f"scene {self.scene.index} has no object id {object_id}")

    def visible_mask(self, i: int) -> np.ndarray:
        return self.owner == i

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
        sem = self.background.copy()
        for i, o in enumerate(self.scene.objects):
            sem[self.owner == i] = CATEGORY_ID[o.category]
        return sem

    def panoptic_ids(self) -> np.ndarray:
        """int32 segment id per pixel: stuff category id, or THING_ID_OFFSET + object id."""
        ids = self.background.astype(np.int32)
        for i, o in enumerate(self.scene.objects):
            ids[self.owner == i] = THING_ID_OFFSET + o.id
        return ids


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


_STUFF_LUT = np.zeros((256, 3), dtype=np.uint8)
for _name in STUFF:
    _STUFF_LUT[CATEGORY_ID[_name]] = STUFF_COLOURS[_name]


def render_scene(scene: Scene) -> Rendering:
    h, w = scene.height, scene.width
    if h != w:
        raise ValueError(f"world scenes are square; got {w}x{h}")
    background = _stuff_layout(scene)
    image = _STUFF_LUT[background]
    owner = np.full((h, w), -1, dtype=np.int16)
    part_owner = np.full((h, w), -1, dtype=np.int16)
    full_masks, part_full = [], []
    for i, obj in enumerate(scene.objects):
        parts = object_part_masks(obj, height=h, width=w)
        part_full.append(parts)
        full_masks.append(np.logical_or.reduce(parts))
        if obj.is_composite:
            names = [t.part for t in object_templates(obj.category, obj.size, w)]
            for k, (name, m) in enumerate(zip(names, parts)):
                image[m] = PART_COLOURS[str(name)]
                part_owner[m] = k
        else:
            image[parts[0]] = COLOURS[str(obj.colour)]
            part_owner[parts[0]] = -1
        owner[full_masks[-1]] = i
    objects = []
    for i, obj in enumerate(scene.objects):
        vis = owner == i
        if not vis.any():
            raise ValueError(f"object {obj.id} of scene {scene.index} is fully hidden; the scene is invalid")
        parts = ()
        if obj.is_composite:
            names = [t.part for t in object_templates(obj.category, obj.size, w)]
            plist = []
            for k, (name, full) in enumerate(zip(names, part_full[i])):
                pv = vis & (part_owner == k)
                plist.append(PartAnnotation(name=str(name), index=k, bbox=mask_bbox(pv) if pv.any() else (0, 0, 0, 0),
                                            area=int(pv.sum()), full_area=int(full.sum())))
            parts = tuple(plist)
        objects.append(ObjectAnnotation(object=obj, bbox=mask_bbox(vis), area=int(vis.sum()),
                                        full_bbox=mask_bbox(full_masks[i]), full_area=int(full_masks[i].sum()),
                                        parts=parts))
    stuff = []
    for name in STUFF:
        m = (owner < 0) & (background == CATEGORY_ID[name])
        if m.any():
            stuff.append(StuffAnnotation(name=name, bbox=mask_bbox(m), area=int(m.sum())))
    for arr in (image, background, owner, part_owner):
        arr.setflags(write=False)
    return Rendering(scene=scene, image=image, background=background, owner=owner, part_owner=part_owner,
                     full_masks=tuple(full_masks), part_full_masks=tuple(part_full), objects=tuple(objects),
                     stuff=tuple(stuff))

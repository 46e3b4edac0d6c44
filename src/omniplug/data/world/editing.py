"""Editing triples: an instruction that changes one object, and the edited scene.

Only the edited object changes (same depth, same centre), so source and target renders can
differ only inside the union of its old and new footprints: that union is the edit mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .language import short_ref, unique_refs
from .render import Rendering
from .scene import Scene, SceneObject, WorldConfig, check_scene
from .vocab import COLOURS, SHAPES, SIZES

EDIT_KINDS = ("recolour", "replace", "remove", "resize")

_TEMPLATES = {
    "recolour": ("make {ref} {colour}", "change the colour of {ref} to {colour}", "paint {ref} {colour}"),
    "replace": ("replace {ref} with a {size} {colour} {shape}", "turn {ref} into a {size} {colour} {shape}"),
    "remove": ("remove {ref}", "delete {ref} from the picture"),
    "resize": ("make {ref} {size}", "change {ref} to a {size} one"),
}


@dataclass(frozen=True)
class Edit:
    kind: str
    instruction: str
    object_id: int
    source: Scene
    target: Scene  # same split/index/seed; the edited object keeps its id (absent when removed)


def edit_mask(source: Rendering, target: Rendering, object_id: int) -> np.ndarray:
    """Union of the edited object's full footprint before and after the edit."""
    mask = source.full_mask(source.position(object_id))
    if any(o.id == object_id for o in target.scene.objects):
        mask |= target.full_mask(target.position(object_id))
    return mask


def _allowed(colour: str, shape: str, scene: Scene) -> bool:
    return scene.split == "holdout" or (colour, shape) not in scene.holdout


def _propose(kind: str, o: SceneObject, scene: Scene, rng: np.random.Generator) -> tuple[SceneObject | None, dict]:
    """The edited object (None: removed) and the words filling the instruction template."""
    if kind == "remove":
        return None, {}
    if kind == "recolour" and not o.is_composite:
        colours = [c for c in COLOURS if c != o.colour and _allowed(c, o.category, scene)]
        c = colours[int(rng.integers(len(colours)))]
        return replace(o, colour=c), {"colour": c}
    if kind == "resize" and not o.is_composite:
        s = SIZES[1 - SIZES.index(o.size)]
        return replace(o, size=s), {"size": s}
    if kind == "replace":
        shapes = [s for s in SHAPES if s != o.category]
        shape = shapes[int(rng.integers(len(shapes)))]
        colours = [c for c in COLOURS if _allowed(c, shape, scene)]
        colour = colours[int(rng.integers(len(colours)))]
        size = SIZES[int(rng.integers(len(SIZES)))]
        return replace(o, category=shape, colour=colour, size=size), {"shape": shape, "colour": colour, "size": size}
    raise LookupError(f"edit {kind!r} does not apply to a {o.category}")


def sample_edit(scene: Scene, config: WorldConfig, rng: np.random.Generator, *, attempts: int = 12) -> Edit | None:
    """A random valid edit of one uniquely describable object, or None after ``attempts`` failures."""
    for _ in range(attempts):
        o = scene.objects[int(rng.integers(len(scene.objects)))]
        ref = short_ref(scene, o)
        if ref is None:
            continue
        kind = EDIT_KINDS[int(rng.integers(len(EDIT_KINDS)))]
        try:
            new, words = _propose(kind, o, scene, rng)
        except LookupError:
            continue
        objects = tuple(p for p in (new if p.id == o.id else p for p in scene.objects) if p is not None)
        if not objects:
            continue
        target = replace(scene, objects=objects)
        if not check_scene(target, config):
            continue
        refs = unique_refs(scene, o)
        ref_text = refs[int(rng.integers(len(refs)))].text()
        templates = _TEMPLATES[kind]
        text = templates[int(rng.integers(len(templates)))].format(ref=ref_text, **words)
        return Edit(kind=kind, instruction=text, object_id=o.id, source=scene, target=target)
    return None

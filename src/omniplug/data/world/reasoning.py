"""Reasoning-segmentation queries: targets named by relations, superlatives, attribute matching,
negation and part-whole structure, never by their own attribute words alone.

A :class:`Query` is a tiny program; :func:`evaluate` runs it on a scene and returns every object
that satisfies it. A query is emitted only when that answer is exactly its target, so
uniqueness is verified by the same code that defines the meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import object_templates
from .language import Desc, RefExpr, relation_holds, descs_for, extreme, margin, unique_refs
from .render import Rendering
from .scene import Scene, SceneObject
from .vocab import COLOURS, SIZES

KINDS = ("relation", "nearest", "superlative", "extreme", "unique", "same", "negation", "part")
_PREP = {"left of": "to the left of", "right of": "to the right of", "above": "above", "below": "below"}
_EXTREME = {"left": "leftmost", "right": "rightmost", "top": "highest", "bottom": "lowest"}
_AREA_RATIO = 1.3  # 'largest' needs the winner this much bigger than the runner-up
_NEAREST_RATIO = 0.75  # 'nearest' needs the winner this much closer than the runner-up


@dataclass(frozen=True)
class Query:
    op: str  # see evaluate()
    desc: Desc | None = None  # the set the answer is chosen from (None: every object)
    anchor: "RefExpr | Query | None" = None
    arg: str | None = None  # relation / direction / negated value / part name

    def text(self) -> str:
        noun = self.desc.noun() if self.desc is not None else "object"
        a = self.anchor.text() if self.anchor is not None else ""
        if self.op == "relation":
            return f"the {noun} {_PREP[str(self.arg)]} {a}"
        if self.op == "nearest":
            return f"the {noun} nearest to {a}"
        if self.op in ("largest", "smallest"):
            return f"the {self.op} {noun}"
        if self.op == "extreme":
            return f"the {_EXTREME[str(self.arg)]} {noun}"
        if self.op == "unique-colour":
            return "the shape whose colour no other shape shares"
        if self.op == "unique-category":
            return "the only object whose shape appears just once"
        if self.op == "same-colour":
            return f"the other shape with the same colour as {a}"
        if self.op == "same-category":
            return f"the other object with the same shape as {a}"
        if self.op in ("not-colour", "not-size"):
            return f"the {noun} that is not {self.arg}"
        if self.op == "not-category":
            return f"the {noun} that is not a {self.arg}"
        if self.op == "part":
            return f"the {'wheels' if self.arg == 'wheel' else self.arg} of {a}"
        raise ValueError(f"unknown query op {self.op!r}")


def _anchor(scene: Scene, anchor: "RefExpr | Query | None") -> SceneObject | None:
    if anchor is None:
        return None
    hits = anchor.resolve(scene) if isinstance(anchor, RefExpr) else evaluate(anchor, scene)
    return hits[0] if len(hits) == 1 else None


def evaluate(q: Query, scene: Scene) -> list[SceneObject]:
    """Every object satisfying ``q``; ambiguous comparisons count every contender as an answer."""
    pool = q.desc.select(scene) if q.desc is not None else list(scene.objects)
    gap = margin(scene)
    if q.op in ("relation", "nearest", "same-colour", "same-category", "part"):
        a = _anchor(scene, q.anchor)
        if a is None:
            return []
        pool = [o for o in pool if o.id != a.id]
        if q.op == "relation":
            return [o for o in pool if relation_holds(o, a, str(q.arg), gap) is not False]
        if q.op == "nearest":
            ranked = sorted(pool, key=lambda o: (o.x - a.x) ** 2 + (o.y - a.y) ** 2)
            if len(ranked) >= 2:
                d1, d2 = (float(np.hypot(o.x - a.x, o.y - a.y)) for o in ranked[:2])
                if d1 > _NEAREST_RATIO * d2:
                    return ranked[:2]
            return ranked[:1]
        if q.op == "same-colour":
            return [o for o in pool if not o.is_composite and o.colour == a.colour]
        if q.op == "same-category":
            return [o for o in pool if o.category == a.category]
        return [a] if a.is_composite and q.arg in _part_names(a, scene) else []
    if q.op in ("largest", "smallest"):
        area = {o.id: sum(t.area for t in object_templates(o.category, o.size, scene.width)) for o in pool}
        ranked = sorted(pool, key=lambda o: area[o.id], reverse=q.op == "largest")
        if len(ranked) >= 2:
            big, small = sorted((area[ranked[0].id], area[ranked[1].id]), reverse=True)
            if big < _AREA_RATIO * small:
                return ranked[:2]
        return ranked[:1]
    if q.op == "extreme":
        hit = extreme(pool, str(q.arg), gap)
        return pool if hit is None else [hit]
    if q.op == "unique-colour":
        simple = [o for o in scene.objects if not o.is_composite]
        return [o for o in simple if sum(p.colour == o.colour for p in simple) == 1]
    if q.op == "unique-category":
        return [o for o in scene.objects if sum(p.category == o.category for p in scene.objects) == 1]
    if q.op == "not-colour":
        return [o for o in pool if o.colour != q.arg]
    if q.op == "not-size":
        return [o for o in pool if o.size != q.arg]
    if q.op == "not-category":
        return [o for o in pool if o.category != q.arg]
    raise ValueError(f"unknown query op {q.op!r}")


def _part_names(o: SceneObject, scene: Scene) -> list[str]:
    return [str(t.part) for t in object_templates(o.category, o.size, scene.width)]


# ---- candidate enumeration, one kind at a time -------------------------------------------------


def _anchor_refs(scene: Scene, target: SceneObject, *, avoid: str | None = None) -> list[RefExpr]:
    """Unique plain expressions of each other object (without the attribute ``avoid``)."""
    out = []
    for a in scene.objects:
        if a.id == target.id:
            continue
        refs = [r for r in unique_refs(scene, a) if r.location is None
                and (avoid is None or getattr(r.desc, avoid) is None)]
        if refs:
            out.append(refs[0])
    return out


def _candidates(kind: str, scene: Scene, target: SceneObject) -> list[Query]:
    descs = [d for d in descs_for(target) if len(d.select(scene)) >= 2]
    qs: list[Query] = []
    if kind in ("relation", "nearest"):
        # The chosen-from set must keep two members besides the anchor, so the relation does the work.
        pairs = [(d, a) for d in descs for a in _anchor_refs(scene, target)
                 if sum(o not in a.resolve(scene) for o in d.select(scene)) >= 2]
        if kind == "relation":
            qs = [Query(op="relation", desc=d, anchor=a, arg=r) for d, a in pairs for r in _PREP]
        else:
            qs = [Query(op="nearest", desc=d, anchor=a) for d, a in pairs]
    elif kind == "superlative":
        pools = descs + ([None] if len(scene.objects) >= 2 else [])
        qs = [Query(op=op, desc=d) for d in pools for op in ("largest", "smallest")]
    elif kind == "extreme":
        qs = [Query(op="extreme", desc=d, arg=w) for d in descs for w in _EXTREME]
    elif kind == "unique":
        if sum(not o.is_composite for o in scene.objects) >= 3:
            qs.append(Query(op="unique-colour"))
        if len(scene.objects) >= 3:
            qs.append(Query(op="unique-category"))
    elif kind == "same":
        qs = [Query(op="same-colour", anchor=a) for a in _anchor_refs(scene, target, avoid="colour")]
        qs += [Query(op="same-category", anchor=a) for a in _anchor_refs(scene, target, avoid="category")]
    elif kind == "negation":
        same_cat = Desc(category=target.category)
        if len(same_cat.select(scene)) >= 2 and not target.is_composite:
            qs += [Query(op="not-colour", desc=same_cat, arg=c) for c in COLOURS if c != target.colour]
            qs += [Query(op="not-size", desc=same_cat, arg=s) for s in SIZES if s != target.size]
        if not target.is_composite:
            same_col = Desc(colour=target.colour)
            cats = {o.category for o in same_col.select(scene)} - {target.category}
            qs += [Query(op="not-category", desc=same_col, arg=c) for c in sorted(cats)]
    valid = []
    for q in qs:
        hits = evaluate(q, scene)
        # Negations must negate something present, so that the word is doing work.
        if q.op.startswith("not-") and not any(q.arg in (o.colour, o.size, o.category) for o in
                                               (q.desc.select(scene) if q.desc else scene.objects)):
            continue
        if len(hits) == 1 and hits[0].id == target.id:
            valid.append(q)
    return valid


def _part_candidates(scene: Scene, rendering: Rendering, target: SceneObject) -> list[tuple[Query, str]]:
    i = rendering.position(target.id)
    ann = rendering.objects[i]
    out = []
    whole_refs: list[RefExpr | Query] = []
    for kind in ("relation", "nearest", "extreme"):
        whole_refs += _candidates(kind, scene, target)
    whole_refs += [r for r in unique_refs(scene, target)]
    for part in dict.fromkeys(p.name for p in ann.parts):
        if part == "wall":  # the wall has a hole (the door); its polygon would not be its mask
            continue
        if all(p.area == p.full_area for p in ann.parts if p.name == part):
            out += [(Query(op="part", anchor=r, arg=part), part) for r in whole_refs]
    return out


@dataclass(frozen=True)
class ReasonTarget:
    query: Query
    object_id: int
    part: str | None  # the part name when the target is a part of a composite

    def mask(self, rendering: Rendering) -> np.ndarray:
        i = rendering.position(self.object_id)
        return rendering.part_mask(i, self.part) if self.part else rendering.visible_mask(i)


_PHRASINGS = ("Please segment {q}.", "Can you find {q} in this picture?", "Show {q} with a mask.",
              "Point out {q} in the image.")


def reasoning_query(rendering: Rendering, rng: np.random.Generator) -> tuple[ReasonTarget, tuple[str, ...]] | None:
    """One verified query for the scene (kind chosen at random), or None if no kind has one."""
    scene = rendering.scene
    visible = [o for o, a in zip(scene.objects, rendering.objects) if not a.occluded]
    for k in rng.permutation(len(KINDS)):
        kind = KINDS[int(k)]
        cands: list[ReasonTarget] = []
        if kind == "part":
            for o in scene.objects:
                if o.is_composite:
                    cands += [ReasonTarget(query=q, object_id=o.id, part=p) for q, p in _part_candidates(scene, rendering, o)]
        else:
            for o in visible:
                cands += [ReasonTarget(query=q, object_id=o.id, part=None) for q in _candidates(kind, scene, o)]
        if cands:
            t = cands[int(rng.integers(len(cands)))]
            picks = rng.choice(len(_PHRASINGS), size=2, replace=False)
            return t, tuple(_PHRASINGS[int(p)].format(q=t.query.text()) for p in picks)
    return None

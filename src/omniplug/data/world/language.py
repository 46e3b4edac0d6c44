"""Language about scenes: noun phrases, captions (and their parser), VQA, referring expressions.

Every expression is built from a small structured value (:class:`Desc`, :class:`RefExpr`) whose
meaning is evaluated on the scene, so uniqueness is checked, not assumed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .scene import Scene, SceneObject
from .vocab import COLOURS, COMPOSITE_SIZE, COMPOSITES, PLURALS, REFERENCE_SIZE, SHAPES, SIZES


def margin(scene: Scene) -> float:
    """Minimum centre offset (pixels) for 'left of' / 'above' etc. to count as unambiguous."""
    return 3.0 * scene.width / REFERENCE_SIZE


# ---- noun phrases -----------------------------------------------------------------------


@dataclass(frozen=True)
class Desc:
    """Attributes naming a set of objects. ``category=None`` means any simple shape ('the red object')."""

    category: str | None = None
    colour: str | None = None
    size: str | None = None

    def matches(self, o: SceneObject) -> bool:
        if self.category is None and o.is_composite:
            return False
        return ((self.category is None or o.category == self.category)
                and (self.colour is None or o.colour == self.colour)
                and (self.size is None or (o.size == self.size and not o.is_composite)))

    def noun(self) -> str:
        words = [w for w in (self.size, self.colour) if w]
        return " ".join(words + [self.category or "object"])

    def select(self, scene: Scene) -> list[SceneObject]:
        return list(_select(self, scene))


@lru_cache(maxsize=4096)
def _select(desc: Desc, scene: Scene) -> tuple[SceneObject, ...]:
    return tuple(o for o in scene.objects if desc.matches(o))


def descs_for(o: SceneObject) -> list[Desc]:
    """Descriptions true of ``o``, least specific first."""
    if o.is_composite:
        return [Desc(category=o.category)]
    return [Desc(category=o.category), Desc(category=None, colour=o.colour),
            Desc(category=o.category, colour=o.colour), Desc(category=o.category, size=o.size),
            Desc(category=None, colour=o.colour, size=o.size),
            Desc(category=o.category, colour=o.colour, size=o.size)]


LOCATIONS = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


def _key(o: SceneObject, where: str) -> float:
    return {"left": o.x, "right": -o.x, "top": o.y, "bottom": -o.y}[where]


def extreme(objs: list[SceneObject], where: str, gap: float) -> SceneObject | None:
    """The object furthest towards ``where``, if it leads every other by at least ``gap`` pixels."""
    if len(objs) < 2:
        return None
    ranked = sorted(objs, key=lambda o: _key(o, where))
    return ranked[0] if _key(ranked[1], where) - _key(ranked[0], where) >= gap else None


@dataclass(frozen=True)
class RefExpr:
    """'the <desc>' or 'the <desc> <location>' (location picks the extreme one of >= 2 matches)."""

    desc: Desc
    location: str | None = None

    def resolve(self, scene: Scene) -> list[SceneObject]:
        objs = self.desc.select(scene)
        if self.location is None:
            return objs
        hit = extreme(objs, self.location, margin(scene))
        return [] if hit is None else [hit]

    def text(self) -> str:
        base = f"the {self.desc.noun()}"
        return base if self.location is None else f"{base} {LOCATIONS[self.location]}"


@lru_cache(maxsize=256)
def _unique_refs(scene: Scene, o: SceneObject) -> tuple[RefExpr, ...]:
    out = []
    gap = margin(scene)
    for d in descs_for(o):
        objs = d.select(scene)
        if objs == [o]:
            out.append(RefExpr(desc=d))
        for where in LOCATIONS:
            if len(objs) >= 2 and extreme(objs, where, gap) == o:
                out.append(RefExpr(desc=d, location=where))
    return tuple(out)


def unique_refs(scene: Scene, o: SceneObject) -> list[RefExpr]:
    """Every expression of the two forms above that denotes exactly ``o`` in ``scene``."""
    return list(_unique_refs(scene, o))


def short_ref(scene: Scene, o: SceneObject) -> RefExpr | None:
    refs = unique_refs(scene, o)
    return refs[0] if refs else None


# ---- captions ---------------------------------------------------------------------------


def object_phrase(o: SceneObject) -> str:
    return f"a {o.category}" if o.is_composite else f"a {o.size} {o.colour} {o.category}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def stuff_phrase(scene: Scene) -> str:
    return "on grass by the water under the sky" if scene.water is not None else "on grass under the sky"


_CAPTION_TEMPLATES = ("{phrase}.", "There is {phrase}.", "A picture of {phrase}.")
CAPTION_PROMPTS = ("Describe the image.", "What is in this picture?", "List every object in the scene.")


def caption(scene: Scene, rng: np.random.Generator | None = None, *, bare: bool = False, stuff: bool = True) -> str:
    """Every object, left to right, in the fixed pattern that :func:`parse_caption` reads back.

    ``bare=True`` gives the lower-case phrase without template or full stop ("a small red circle
    on grass under the sky"), which reads well inside prompts such as "Draw {caption}.".
    ``stuff=False`` leaves the background out ("a small red circle"): the brief form people ask for.
    """
    objs = sorted(scene.objects, key=lambda o: (o.x, o.y, o.id))
    phrase = _join([object_phrase(o) for o in objs]) + (f" {stuff_phrase(scene)}" if stuff else "")
    if bare:
        return phrase
    template = _CAPTION_TEMPLATES[0 if rng is None else int(rng.integers(len(_CAPTION_TEMPLATES)))]
    text = template.format(phrase=phrase)
    return text[0].upper() + text[1:]


@dataclass(frozen=True)
class DescribedObject:
    """An object as named in text: no position. ``colour`` is None for composites."""

    category: str
    colour: str | None
    size: str


_SIMPLE_RE = re.compile(r"\b(?:a|an|one) (%s) (%s) (%s)\b" % ("|".join(SIZES), "|".join(COLOURS), "|".join(SHAPES)))
_COMPOSITE_RE = re.compile(r"\b(?:a|an|one) (%s)\b" % "|".join(COMPOSITES))


def parse_caption(text: str) -> list[DescribedObject]:
    """Objects named in a caption written in the :func:`caption` pattern (others are ignored)."""
    low = text.lower()
    out = [DescribedObject(category=m.group(3), colour=m.group(2), size=m.group(1)) for m in _SIMPLE_RE.finditer(low)]
    out += [DescribedObject(category=m.group(1), colour=None, size=COMPOSITE_SIZE) for m in _COMPOSITE_RE.finditer(low)]
    return out


# ---- visual question answering ------------------------------------------------------------


@dataclass(frozen=True)
class QA:
    kind: str
    question: str
    answer: str


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def relation_holds(a: SceneObject, b: SceneObject, rel: str, gap: float) -> bool | None:
    """True/False when clear, None when the centres are too close to say."""
    d = {"left of": b.x - a.x, "right of": a.x - b.x, "above": b.y - a.y, "below": a.y - b.y}[rel]
    if abs(d) < gap:
        return None
    return d > 0


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _count_qas(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    objs = scene.objects
    out = [("How many objects are there?", str(len(objs)))]
    for cat in SHAPES + COMPOSITES:
        n = sum(o.category == cat for o in objs)
        if n or rng.random() < 0.3:
            out.append((f"How many {PLURALS[cat]} are there?", str(n)))
    for col in COLOURS:
        n = sum(o.colour == col for o in objs)
        if n:
            out.append((f"How many {col} shapes are there?", str(n)))
    return out


def _attribute_qas(scene: Scene, attribute: str) -> list[tuple[str, str]]:
    """Questions asking for ``attribute`` of an object named without it."""
    out = []
    for o in scene.objects:
        if o.is_composite:
            continue
        for ref in unique_refs(scene, o):
            if attribute == "colour" and ref.desc.colour is None:
                out.append((f"What colour is {ref.text()}?", str(o.colour)))
            elif attribute == "shape" and ref.desc.category is None:
                out.append((f"What shape is {ref.text()}?", o.category))
            elif attribute == "size" and ref.desc.size is None:
                out.append((f"Is {ref.text()} small or large?", o.size))
    return out


def _position_qas(scene: Scene) -> list[tuple[str, str]]:
    out, half, gap = [], scene.width / 2, margin(scene)
    for o in scene.objects:
        ref = short_ref(scene, o)
        if ref is not None and abs(o.x - half) >= gap:
            out.append((f"Is {ref.text()} in the left or right half of the image?", "left" if o.x < half else "right"))
    return out


def _exists_qas(scene: Scene, rng: np.random.Generator) -> list[tuple[str, str]]:
    present = {(o.colour, o.category) for o in scene.objects if not o.is_composite}
    out = [(f"Is there {article(c)} {c} {s}?", "yes") for c, s in sorted(present)]
    absent = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in present
              and ((c, s) not in scene.holdout or scene.split == "holdout")]
    for i in rng.choice(len(absent), size=min(2, len(absent)), replace=False):
        c, s = absent[int(i)]
        out.append((f"Is there {article(c)} {c} {s}?", "no"))
    out += [(f"Is there a {cat}?", _yes(any(o.category == cat for o in scene.objects))) for cat in COMPOSITES]
    return out


def _relation_qas(scene: Scene) -> list[tuple[str, str]]:
    out, gap = [], margin(scene)
    short = {o.id: short_ref(scene, o) for o in scene.objects}
    for a in scene.objects:
        for b in scene.objects:
            ra, rb = short[a.id], short[b.id]
            if a is b or ra is None or rb is None:
                continue
            for rel in ("left of", "right of", "above", "below"):
                holds = relation_holds(a, b, rel, gap)
                if holds is not None:
                    prep = f"to the {rel}" if rel in ("left of", "right of") else rel
                    out.append((f"Is {ra.text()} {prep} {rb.text()}?", _yes(holds)))
    return out


VQA_KINDS = ("count", "colour", "shape", "size", "position", "exists", "relation")


def vqa(scene: Scene, rng: np.random.Generator, *, k: int = 4) -> list[QA]:
    """Up to ``k`` question-answer pairs, each of a different kind, with short exact answers."""
    out: list[QA] = []
    for i in rng.permutation(len(VQA_KINDS)):
        kind = VQA_KINDS[int(i)]
        if kind == "count":
            pool = _count_qas(scene, rng)
        elif kind in ("colour", "shape", "size"):
            pool = _attribute_qas(scene, kind)
        elif kind == "position":
            pool = _position_qas(scene)
        elif kind == "exists":
            pool = _exists_qas(scene, rng)
        else:
            pool = _relation_qas(scene)
        if pool:
            q, a = pool[int(rng.integers(len(pool)))]
            out.append(QA(kind=kind, question=q, answer=a))
        if len(out) == k:
            break
    return out


# ---- referring expressions ------------------------------------------------------------------


@dataclass(frozen=True)
class Referral:
    object_id: int
    sentences: tuple[str, ...]


def referrals(scene: Scene, rng: np.random.Generator, *, max_sentences: int = 3) -> list[Referral]:
    """For each object with a unique expression, up to ``max_sentences`` distinct ones (shortest first)."""
    out = []
    for o in scene.objects:
        refs = unique_refs(scene, o)
        if not refs:
            continue
        rest = [refs[int(i)] for i in rng.permutation(len(refs) - 1) + 1][: max_sentences - 1] if len(refs) > 1 else []
        out.append(Referral(object_id=o.id, sentences=tuple(r.text() for r in [refs[0]] + rest)))
    return out


def tokens(sentence: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", sentence.lower())

"""A world that moves: short clips in which objects move in stated ways.

A :class:`Clip` is a base :class:`~omniplug.data.world.scene.Scene` plus the motions of one or two of
its objects (a direction and a whole number of pixels per frame) over ``frames`` frames. Frame ``t``
is the base scene with each mover's centre shifted by ``t`` steps; :func:`render_clip` renders every
frame exactly (masks, boxes, centres per frame, from :func:`~omniplug.data.world.render.render_scene`).
Every frame satisfies the scene constraints (objects inside the canvas, ``min_visible`` of each object
visible, same-coloured objects apart), checked with ``check_scene``.

Motions: simple shapes move ``left`` / ``right`` / ``up`` ("rises") / ``down`` ("falls"); the car
drives left or right; houses and trees stay put. Language: a caption ("A red circle moves left."),
a generation prompt ("Make a clip of a red circle moving left."), and questions ("Which way does the
red circle move?" -> "left").

Hold-out: colour-shape-direction triples (:data:`DEFAULT_MOTION_HOLDOUT`) never move that way in the
train / val / test splits; in the ``holdout`` split the first mover always does. Clip ``index`` of a
split draws its randomness only from ``(seed, split, index)``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


from .language import article, short_ref
from .render import Rendering, render_scene
from .scene import Scene, SceneObject, WorldConfig, check_scene, inside_canvas, sample_scene, scene_rng
from .vocab import COLOURS, REFERENCE_SIZE, SHAPES

DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
#: colour, shape, direction: never moving that way outside the holdout split (none is an image hold-out pair)
DEFAULT_MOTION_HOLDOUT: tuple[tuple[str, str, str], ...] = (
    ("red", "circle", "left"),
    ("green", "square", "down"),
    ("blue", "triangle", "right"),
    ("orange", "star", "up"),
)
MOVING_COMPOSITES: dict[str, tuple[str, ...]] = {"car": ("left", "right")}
_VERB = {"left": "moves left", "right": "moves right", "up": "rises", "down": "falls"}
_GERUND = {"left": "moving left", "right": "moving right", "up": "rising", "down": "falling"}


@dataclass(frozen=True)
class Motion:
    object_id: int
    direction: str  # left | right | up | down
    step: int  # pixels per frame

    @property
    def delta(self) -> tuple[int, int]:
        dx, dy = DIRECTIONS[self.direction]
        return dx * self.step, dy * self.step

    def to_json(self) -> dict:
        return {"object_id": self.object_id, "direction": self.direction, "pixels_per_frame": self.step}


@dataclass(frozen=True)
class Clip:
    scene: Scene  # frame 0
    motions: tuple[Motion, ...]
    frames: int

    def frame(self, t: int) -> Scene:
        """The scene at frame ``t`` (0 <= t < frames)."""
        if not 0 <= t < self.frames:
            raise IndexError(f"frame {t} of a {self.frames}-frame clip")
        moved = {m.object_id: m for m in self.motions}
        objects = []
        for o in self.scene.objects:
            m = moved.get(o.id)
            objects.append(o if m is None else replace(o, x=o.x + t * m.delta[0], y=o.y + t * m.delta[1]))
        return replace(self.scene, objects=tuple(objects))

    def mover(self, m: Motion) -> SceneObject:
        return self.scene.object(m.object_id)


def triple(o: SceneObject, direction: str) -> tuple[str | None, str, str]:
    return o.colour, o.category, direction


def _directions(o: SceneObject) -> tuple[str, ...]:
    if o.is_composite:
        return MOVING_COMPOSITES.get(o.category, ())
    return tuple(DIRECTIONS)


def _fits(clip: Clip, config: WorldConfig) -> bool:
    for t in range(clip.frames):
        frame = clip.frame(t)
        if not all(inside_canvas(o, config.size) for o in frame.objects) or not check_scene(frame, config):
            return False
    return True


def sample_clip(*, config: WorldConfig, seed: int, split: str, index: int, frames: int = 8,
                holdout: tuple[tuple[str, str, str], ...] = DEFAULT_MOTION_HOLDOUT,
                max_objects: int = 3) -> Clip:
    """Clip ``index`` of ``split``: 1..``max_objects`` objects, one mover (two in about a third of clips)."""
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    if split == "holdout" and not holdout:
        raise ValueError("split 'holdout' needs a non-empty motion hold-out list")
    rng = scene_rng(seed=seed, split=split, index=index, stream="clip")
    scale = config.size / REFERENCE_SIZE
    for attempt in range(200):
        # the base scene never holds an image hold-out pair: those stay the image world's hold-out
        base = sample_scene(config=config, seed=seed, split="test" if split == "holdout" else split,
                            index=index * 1000 + attempt, stream="clip", n_objects=(1, max_objects))
        base = replace(base, split=split, index=index, seed=seed)
        if split == "holdout":  # the first object becomes a held-out colour-shape and moves its held-out way
            colour, shape, _ = holdout[int(rng.integers(len(holdout)))]
            first = base.objects[0]
            size = first.size if not first.is_composite else "large"
            base = replace(base, objects=(replace(first, category=shape, colour=colour, size=size),) + base.objects[1:])
        movable = [o for o in base.objects if _directions(o)]
        if not movable:
            continue
        n_movers = 2 if len(movable) >= 2 and rng.random() < 0.35 else 1
        order = [int(i) for i in rng.permutation(len(movable))]
        movers = [movable[i] for i in order[:n_movers]]
        if split == "holdout":
            movers = [base.objects[0]] + [m for m in movers if m.id != base.objects[0].id][:n_movers - 1]
        motions = []
        for k, o in enumerate(movers):
            if split == "holdout" and k == 0:
                options = [d for c, s, d in holdout if (c, s) == (o.colour, o.category)]
            else:
                options = [d for d in _directions(o) if triple(o, d) not in holdout]
            if not options:
                break
            direction = options[int(rng.integers(len(options)))]
            step = max(1, int(round(float(rng.choice([2.0, 3.0])) * scale)))
            motions.append(Motion(object_id=o.id, direction=direction, step=step))
        if len(motions) != len(movers):
            continue
        clip = Clip(scene=base, motions=tuple(motions), frames=frames)
        if _fits(clip, config):
            return clip
    raise RuntimeError(f"no valid clip found for {split} clip {index} (seed {seed}); try a larger image size")


def render_clip(clip: Clip) -> list[Rendering]:
    return [render_scene(clip.frame(t)) for t in range(clip.frames)]


# --- language ----------------------------------------------------------------------------------------------
def _name(clip: Clip, o: SceneObject, *, definite: bool) -> str:
    if o.is_composite:
        return f"{'the' if definite else 'a'} {o.category}"
    if not definite:
        return f"{article(o.colour)} {o.colour} {o.category}"
    ref = short_ref(clip.scene, o)  # unique at frame 0 ("the circle on the left")
    return ref.text() if ref is not None else f"the {o.colour} {o.category}"


def _verb(o: SceneObject, direction: str) -> str:
    return f"drives {direction}" if o.is_composite else _VERB[direction]


def _gerund(o: SceneObject, direction: str) -> str:
    return f"driving {direction}" if o.is_composite else _GERUND[direction]


def clip_caption(clip: Clip) -> str:
    """'A red circle moves left.' / 'A blue square falls and the car drives right.'"""
    parts = [f"{_name(clip, clip.mover(m), definite=False)} {_verb(clip.mover(m), m.direction)}" for m in clip.motions]
    text = " and ".join(parts)
    return text[0].upper() + text[1:] + "."


def generation_prompt(clip: Clip) -> str:
    """'Make a clip of a red circle moving left.'"""
    parts = [f"{_name(clip, clip.mover(m), definite=False)} {_gerund(clip.mover(m), m.direction)}" for m in clip.motions]
    return f"Make a clip of {' and '.join(parts)}."


def motion_questions(clip: Clip) -> list[tuple[str, str]]:
    """One question per mover about its direction, and one about something that stays (answer 'it stays')."""
    qas = []
    for m in clip.motions:
        o = clip.mover(m)
        qas.append((f"Which way does {_name(clip, o, definite=True)} move?", m.direction))
    moving = {m.object_id for m in clip.motions}
    still = [o for o in clip.scene.objects if o.id not in moving and (o.is_composite or short_ref(clip.scene, o))]
    if still:
        qas.append((f"Which way does {_name(clip, still[0], definite=True)} move?", "it stays"))
    return qas


def known_directions() -> tuple[str, ...]:
    return tuple(DIRECTIONS)


def validate_motion_holdout(triples) -> tuple[tuple[str, str, str], ...]:
    out = []
    for colour, shape, direction in triples:
        if colour not in COLOURS or shape not in SHAPES or direction not in DIRECTIONS:
            raise ValueError(f"bad motion hold-out triple {(colour, shape, direction)}: colours {sorted(COLOURS)}, "
                             f"shapes {list(SHAPES)}, directions {list(DIRECTIONS)}")
        out.append((colour, shape, direction))
    return tuple(out)

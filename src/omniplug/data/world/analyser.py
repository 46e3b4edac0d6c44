"""Parse a world image back into objects with classical image processing, and score the result.

Pipeline: (1) quantise every pixel to the nearest named colour (objects, composite parts, stuff;
far-off pixels are "unknown") and smooth away speckle; (2) split each object colour, and each
composite's anchor-part colour (wall, crown, body), into 8-connected components (scipy.ndimage);
(3) fit the renderer's own templates to each component at every translation that can contain it:
cost = component pixels left unexplained + template pixels on stuff or on another component of
the same colour, while pixels of other objects may hide the shape (occlusion) for free. A
composite is fitted with all its part templates at once. docs/world.md has the measured accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

from .geometry import Template, object_extent, object_templates
from .language import DescribedObject, parse_caption
from .scene import Scene, SceneObject
from .vocab import (
    ALL_COLOURS, COLOURS, COMPOSITE_ANCHOR, COMPOSITE_PARTS, COMPOSITE_SIZE, COMPOSITES, REFERENCE_SIZE, SHAPES, SIZES,
    STUFF_COLOURS,
)

_NAMES = tuple(ALL_COLOURS)
_RGB = np.array([ALL_COLOURS[n] for n in _NAMES], dtype=np.int32)
_INDEX = {n: i for i, n in enumerate(_NAMES)}
_STUFF_IDX = np.array([_INDEX[n] for n in STUFF_COLOURS])
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class DetectedObject:
    category: str  # shape or composite name
    colour: str | None  # None for composites
    size: str
    x: float  # centre, same convention as SceneObject (pixel-corner coordinates)
    y: float
    bbox: tuple[int, int, int, int]  # COCO xywh of the component's pixels
    area: int  # pixels of the component
    mismatch: int  # pixels the best template failed to explain (0 on clean renders)


def to_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image or an array (RGBA / grey are converted)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr * 255 if arr.max() <= 1.0 else arr), 0, 255).astype(np.uint8)
    return arr[..., :3]


UNKNOWN = len(_NAMES)  # label of pixels far from every named colour (blends, noise)


def quantise(image: Image.Image | np.ndarray, *, max_distance: float | None = 60.0,
             smooth: bool = True) -> np.ndarray:
    """(H, W) index of the nearest named colour (``ALL_COLOURS`` order) per pixel.

    Pixels farther than ``max_distance`` (RGB units) from every named colour get ``UNKNOWN``.
    ``smooth`` relabels pixels that disagree with most of their 3x3 neighbourhood to its
    majority label (removes speckle and one-pixel blend rims; clean renders are unchanged
    except at one-pixel tips, which the template fit tolerates).
    """
    arr = to_array(image).astype(np.int32)
    d = ((arr[:, :, None, :] - _RGB[None, None]) ** 2).sum(-1)
    labels = d.argmin(-1)
    if max_distance is not None:
        labels[d.min(-1) > max_distance ** 2] = UNKNOWN
    if smooth:
        onehot = np.eye(UNKNOWN + 1, dtype=np.float32)[labels]
        counts = ndimage.uniform_filter(onehot, size=(3, 3, 1), mode="nearest") * 9
        own = np.take_along_axis(counts, labels[..., None], axis=-1)[..., 0]
        majority = counts.argmax(-1)
        relabel = (own < 2.5) & (np.take_along_axis(counts, majority[..., None], axis=-1)[..., 0] >= 4.5)
        labels = np.where(relabel, majority, labels)
    return labels


def _window_sums(arr: np.ndarray, t: Template, xs: range, ys: range) -> np.ndarray:
    """For every centre (x in xs, y in ys): number of template pixels on True pixels of ``arr``."""
    region = arr[ys.start + t.dy: ys.stop - 1 + t.dy + t.height, xs.start + t.dx: xs.stop - 1 + t.dx + t.width]
    views = np.lib.stride_tricks.sliding_window_view(region, (t.height, t.width))
    return np.einsum("ijkl,kl->ij", views, t.mask.astype(np.int32))


def _fit(channels: list[tuple[Template, np.ndarray, np.ndarray]], comp: np.ndarray,
         box: tuple[int, int, int, int], slack: int) -> tuple[int, int, int, int] | None:
    """Best centre for an object whose first template must contain the component ``comp``.

    ``channels``: (template, forbidden, free) per template of the object, where ``forbidden``
    marks pixels that template can never cover (stuff, a colour it would be drawn over) and
    ``free`` pixels that may hide it (other objects). Returns (cost, occluded, x, y) or None.
    Arrays are padded; coordinates are in the padded frame.
    """
    bx, by, bw, bh = box
    anchor = channels[0][0]
    # Placements whose first template contains the component, widened by ``slack`` pixels so that
    # a rim of misread pixels (blur, compression) costs a few pixels instead of excluding the template.
    xs = range(bx + bw - anchor.dx - anchor.width - slack, bx - anchor.dx + 1 + slack)
    ys = range(by + bh - anchor.dy - anchor.height - slack, by - anchor.dy + 1 + slack)
    if len(xs) <= 0 or len(ys) <= 0:
        return None
    cost = int(comp.sum()) - _window_sums(comp.view(np.uint8), anchor, xs, ys)
    occluded = np.zeros_like(cost)
    for t, forbidden, free in channels:
        cost = cost + _window_sums(forbidden.view(np.uint8), t, xs, ys)
        occluded = occluded + _window_sums(free.view(np.uint8), t, xs, ys)
    key = cost * (comp.size + 1) + occluded
    i, j = np.unravel_index(int(key.argmin()), key.shape)
    return int(cost[i, j]), int(occluded[i, j]), xs.start + int(j), ys.start + int(i)


def analyse(image: Image.Image | np.ndarray, *, min_fraction: float = 0.4, max_cost: float = 0.5,
            smooth: bool = True) -> list[DetectedObject]:
    """Objects in a world image.

    A colour component becomes an object when it covers at least ``min_fraction`` of the
    smallest template it could be, and its best template fit leaves at most ``max_cost`` x
    (template area) pixels unexplained; anything else is noise (blend rims, speckle).
    On clean renders every object is recovered exactly (see docs/world.md for the figures).
    """
    labels = quantise(image, smooth=smooth)
    h, w = labels.shape
    if h != w:
        raise ValueError(f"world images are square; got {w}x{h}")
    reach = _reach(w)
    slack = max(1, round(w / REFERENCE_SIZE))
    pad = reach + slack  # the padding counts as stuff: objects never leave the canvas
    labels = np.pad(labels, pad, constant_values=-1)
    stuff = np.isin(labels, _STUFF_IDX) | (labels < 0)
    out: list[DetectedObject] = []
    for colour in list(COLOURS) + [COMPOSITE_ANCHOR[c] for c in COMPOSITE_PARTS]:
        same = labels == _INDEX[colour]
        if not same.any():
            continue
        if colour in COLOURS:
            kinds = [(s, z, object_templates(s, z, w)[0]) for s in SHAPES for z in SIZES]
        else:
            composite = next(c for c, a in COMPOSITE_ANCHOR.items() if a == colour)
            kinds = [(composite, COMPOSITE_SIZE, next(t for t in object_templates(composite, COMPOSITE_SIZE, w)
                                                      if t.part == colour))]
        min_pixels = min_fraction * min(t.area for _, _, t in kinds)
        comps, n = ndimage.label(same, structure=_EIGHT)
        for k, sl in enumerate(ndimage.find_objects(comps), start=1):
            # Work in a window around the component that holds every placement of every template.
            r0, c0 = sl[0].start - pad, sl[1].start - pad
            win = (slice(r0, sl[0].stop + pad), slice(c0, sl[1].stop + pad))
            comp = comps[win] == k
            area = int(comp.sum())
            if area < min_pixels:
                continue
            box = (pad, pad, sl[1].stop - sl[1].start, sl[0].stop - sl[0].start)
            lab, stf, sm = labels[win], stuff[win], same[win]
            forbidden = stf | (sm & ~comp)
            free = ~stf & ~sm
            best = None
            for cat, size, t in kinds:
                channels = ([(t, forbidden, free)] if colour in COLOURS
                            else _composite_channels(cat, w, lab, stf, forbidden, free))
                fit = _fit(channels, comp, box, slack)
                if fit is not None and (best is None or fit[:2] < best[0][:2]):
                    best = (fit, cat, size, t.area)
            if best is None or best[0][0] > max_cost * best[3]:
                continue
            (cost, _occ, x, y), cat, size, _ = best
            ox, oy = c0 - pad, r0 - pad  # window frame -> image frame
            out.append(DetectedObject(category=cat, colour=colour if colour in COLOURS else None, size=size,
                                      x=float(x + ox), y=float(y + oy), bbox=(pad + ox, pad + oy, box[2], box[3]),
                                      area=area, mismatch=cost))
    return out


@lru_cache(maxsize=None)
def _reach(image_size: int) -> int:
    """Farthest (pixels) any template pixel of an object can lie from one of its visible pixels."""
    spans = [object_extent(c, z, image_size) for c in SHAPES + COMPOSITES for z in SIZES]
    return 1 + max(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in spans)


def _composite_channels(composite: str, image_size: int, labels: np.ndarray, stuff: np.ndarray,
                        anchor_forbidden: np.ndarray, anchor_free: np.ndarray) -> list[tuple[Template, np.ndarray, np.ndarray]]:
    """Anchor part first; each other part may not cover stuff nor a part drawn before it."""
    temps = object_templates(composite, COMPOSITE_SIZE, image_size)
    anchor_name = COMPOSITE_ANCHOR[composite]
    channels = [(t, anchor_forbidden, anchor_free) for t in temps if t.part == anchor_name][:1]
    order = list(COMPOSITE_PARTS[composite])
    for t in temps:
        if t.part == anchor_name:
            continue
        earlier = [_INDEX[p] for p in order[: order.index(str(t.part))]]
        forbidden = stuff | np.isin(labels, earlier)
        free = ~stuff & (labels != _INDEX[str(t.part)])
        channels.append((t, forbidden, free))
    return channels


# ---- scoring -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpectedObject:
    """What should be found; ``x, y`` None when only attributes are known (e.g. from a caption)."""

    category: str
    colour: str | None
    size: str
    x: float | None = None
    y: float | None = None


def expected_from_scene(scene: Scene) -> list[ExpectedObject]:
    return [ExpectedObject(category=o.category, colour=o.colour, size=o.size, x=float(o.x), y=float(o.y))
            for o in scene.objects]


def expected_from_caption(text: str) -> list[ExpectedObject]:
    return [ExpectedObject(category=d.category, colour=d.colour, size=d.size) for d in parse_caption(text)]


@dataclass(frozen=True)
class MatchScore:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    @property
    def exact(self) -> bool:
        return self.fp == 0 and self.fn == 0


def default_tolerance(image_size: int) -> float:
    return 2.0 * image_size / REFERENCE_SIZE


def score_objects(*, detected: Sequence[DetectedObject | ExpectedObject],
                  expected: Sequence[ExpectedObject | SceneObject | DescribedObject],
                  position_tolerance: float | None = None) -> MatchScore:
    """One-to-one matching on equal (category, colour, size) and, when both sides have positions
    and a tolerance is given, centres within ``position_tolerance`` pixels."""
    exp = [e if isinstance(e, ExpectedObject) else ExpectedObject(
        category=e.category, colour=e.colour, size=e.size,
        x=float(e.x) if isinstance(e, SceneObject) else None, y=float(e.y) if isinstance(e, SceneObject) else None)
        for e in expected]
    big = 1e6
    cost = np.full((len(detected), len(exp)), big)
    for i, d in enumerate(detected):
        for j, e in enumerate(exp):
            if (d.category, d.colour, d.size) != (e.category, e.colour, e.size):
                continue
            if position_tolerance is None or e.x is None or d.x is None:
                cost[i, j] = 0.0
                continue
            dist = float(np.hypot(d.x - e.x, d.y - e.y))
            if dist <= position_tolerance:
                cost[i, j] = dist
    rows, cols = linear_sum_assignment(cost) if cost.size else (np.array([], int), np.array([], int))
    tp = int(sum(cost[r, c] < big for r, c in zip(rows, cols)))
    return MatchScore(tp=tp, fp=len(detected) - tp, fn=len(exp) - tp)


def colour_score(image: Image.Image | np.ndarray, expected: Sequence[ExpectedObject], *,
                 min_fraction: float = 0.4) -> MatchScore:
    """Partial credit for a generated image, shapes ignored: are the described objects' colours there?

    Expected: the colour of each described simple shape, and each composite's anchor part colour (wall,
    crown, body), as a set. Found: every named object colour with a connected region of at least
    ``min_fraction`` x the smallest small-shape template. A picture that draws the right colours as
    blobs scores here but not in ``score_objects``; one picture for every prompt scores on neither.
    """
    labels = quantise(image)
    w = labels.shape[1]
    min_pixels = min_fraction * min(object_templates(s, SIZES[0], w)[0].area for s in SHAPES)
    want = {e.colour if e.colour is not None else COMPOSITE_ANCHOR[e.category] for e in expected}
    found = set()
    for colour in list(COLOURS) + list(COMPOSITE_ANCHOR.values()):
        comps, n = ndimage.label(labels == _INDEX[colour], structure=_EIGHT)
        if n and np.bincount(comps.ravel())[1:].max() >= min_pixels:
            found.add(colour)
    tp = len(want & found)
    return MatchScore(tp=tp, fp=len(found) - tp, fn=len(want) - tp)


@dataclass(frozen=True)
class AccuracyReport:
    scenes: int
    exact_all: float  # fraction of scenes whose every object (shapes and composites) is recovered
    exact_shapes: float  # same, counting simple shapes only
    f1: float  # object-level F1 over all scenes

    def summary(self) -> str:
        return (f"{self.scenes} scenes: exact(all objects) {self.exact_all:.4f}, "
                f"exact(simple shapes) {self.exact_shapes:.4f}, object F1 {self.f1:.4f}")


PERTURBATIONS = ("none", "noise10", "noise25", "blur0.7", "jpeg90", "jpeg75", "down-up2x")


def perturb(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A degraded copy of a render, to measure how the analyser copes with imperfect images."""
    if kind == "none":
        return image
    if kind.startswith("noise"):
        return np.clip(image + rng.normal(0.0, float(kind[5:]), image.shape), 0, 255).astype(np.uint8)
    pil = Image.fromarray(image)
    if kind.startswith("blur"):
        from PIL import ImageFilter
        return np.asarray(pil.filter(ImageFilter.GaussianBlur(float(kind[4:]))))
    if kind.startswith("jpeg"):
        import io
        buf = io.BytesIO()
        pil.save(buf, format="JPEG", quality=int(kind[4:]))
        return np.asarray(Image.open(buf).convert("RGB"))
    if kind == "down-up2x":
        h, w = image.shape[:2]
        return np.asarray(pil.resize((w // 2, h // 2), Image.BILINEAR).resize((w, h), Image.BILINEAR))
    raise ValueError(f"unknown perturbation {kind!r}; available: {', '.join(PERTURBATIONS)}")


def measure_accuracy(scenes: Sequence[Scene], *, position_tolerance: float | None = None,
                     perturbation: str = "none", seed: int = 0) -> AccuracyReport:
    """Render each scene (optionally degrade it), analyse it and compare with its ground truth."""
    from .render import render_scene
    rng = np.random.default_rng(seed)
    ok_all = ok_shapes = tp = fp = fn = 0
    for scene in scenes:
        tol = default_tolerance(scene.width) if position_tolerance is None else position_tolerance
        found = analyse(perturb(render_scene(scene).image, perturbation, rng))
        expected = expected_from_scene(scene)
        s = score_objects(detected=found, expected=expected, position_tolerance=tol)
        shapes = score_objects(detected=[d for d in found if d.category in SHAPES],
                               expected=[e for e in expected if e.category in SHAPES], position_tolerance=tol)
        ok_all += s.exact
        ok_shapes += shapes.exact
        tp, fp, fn = tp + s.tp, fp + s.fp, fn + s.fn
    total = MatchScore(tp=tp, fp=fp, fn=fn)
    n = max(len(scenes), 1)
    return AccuracyReport(scenes=len(scenes), exact_all=ok_all / n, exact_shapes=ok_shapes / n, f1=total.f1)

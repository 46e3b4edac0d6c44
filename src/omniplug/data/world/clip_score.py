"""Scoring a clip from its pixels alone: what a generated clip shows, read back by the world's analyser.

* per-frame accuracy: each frame's objects (``analyse``) against the expected objects (category, colour,
  size), as object F1 — the image world's measure, frame by frame;
* motion accuracy: for each expected mover, its centroid track across the frames (the matching detected
  object in each frame, nearest to where it was) and the direction of its net displacement, against
  the stated direction (a displacement under ``min_travel`` pixels counts as staying put);
* temporal consistency: the share of frames in which every expected object is found exactly once
  (an object that vanishes, doubles or changes colour mid-clip breaks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .analyser import DetectedObject, ExpectedObject, analyse, score_objects
from .motion import DIRECTIONS, Clip, render_clip
from .vocab import REFERENCE_SIZE


@dataclass(frozen=True)
class MoverSpec:
    category: str
    colour: str | None
    direction: str  # left | right | up | down


@dataclass(frozen=True)
class ClipScore:
    frame_f1: float  # mean over frames
    motion_accuracy: float  # movers whose track goes the stated way
    consistency: float  # frames with every expected object found exactly once
    directions: tuple[str | None, ...]  # the direction read for each mover (None: not found in two frames)


def direction_of(track: Sequence[tuple[float, float] | None], *, min_travel: float) -> str | None:
    """'left' / 'right' / 'up' / 'down' from a centroid track's net displacement, 'stays' under
    ``min_travel`` pixels, None when the object is found in fewer than two frames."""
    found = [p for p in track if p is not None]
    if len(found) < 2:
        return None
    dx, dy = found[-1][0] - found[0][0], found[-1][1] - found[0][1]
    if max(abs(dx), abs(dy)) < min_travel:
        return "stays"
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def track(detections: Sequence[Sequence[DetectedObject]], category: str, colour: str | None
          ) -> list[tuple[float, float] | None]:
    """Per frame, the centre of the detected (category, colour) object nearest to its last position."""
    out: list[tuple[float, float] | None] = []
    last = None
    for found in detections:
        same = [d for d in found if d.category == category and d.colour == colour]
        if not same:
            out.append(None)
            continue
        pick = same[0] if last is None else min(same, key=lambda d: (d.x - last[0]) ** 2 + (d.y - last[1]) ** 2)
        last = (pick.x, pick.y)
        out.append(last)
    return out


def score_frames(frames: Sequence[np.ndarray], *, expected: Sequence[ExpectedObject],
                 movers: Sequence[MoverSpec]) -> ClipScore:
    """Score a clip's frames (H, W, 3 uint8) against what it should show."""
    if len(frames) < 2:
        raise ValueError(f"a clip has at least 2 frames, got {len(frames)}")
    size = frames[0].shape[1]
    detections = [analyse(f) for f in frames]
    f1 = float(np.mean([score_objects(detected=d, expected=expected).f1 for d in detections]))
    directions = tuple(direction_of(track(detections, m.category, m.colour), min_travel=2.0 * size / REFERENCE_SIZE)
                       for m in movers)
    motion = float(np.mean([d == m.direction for d, m in zip(directions, movers)])) if movers else 1.0
    keys = [(e.category, e.colour, e.size) for e in expected]
    whole = [all(sum((d.category, d.colour, d.size) == k for d in found) == keys.count(k) for k in set(keys))
             for found in detections]
    return ClipScore(frame_f1=f1, motion_accuracy=motion, consistency=float(np.mean(whole)), directions=directions)


def expected_of(clip: Clip) -> tuple[list[ExpectedObject], list[MoverSpec]]:
    """What a clip shows: its objects and its movers."""
    expected = [ExpectedObject(category=o.category, colour=o.colour, size=o.size) for o in clip.scene.objects]
    movers = [MoverSpec(category=clip.mover(m).category, colour=clip.mover(m).colour, direction=m.direction)
              for m in clip.motions]
    return expected, movers


def score_clip(frames: Sequence[np.ndarray], clip: Clip) -> ClipScore:
    expected, movers = expected_of(clip)
    return score_frames(frames, expected=expected, movers=movers)


def ground_truth_frames(clip: Clip) -> list[np.ndarray]:
    return [r.image for r in render_clip(clip)]


__all__ = ["ClipScore", "MoverSpec", "direction_of", "expected_of", "ground_truth_frames", "score_clip",
           "score_frames", "track", "DIRECTIONS"]

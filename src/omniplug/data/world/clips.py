"""Write and read clip splits of the moving world (``omniplug world clips``).

Layout of a split (YouTube-VIS's ``videos`` / ``annotations`` / ``categories`` JSON, plus the world's
language and motions)::

    DIR/meta.json                     kind "clips", split, n, seed, frames, size, motion hold-out, versions
    DIR/clips/000000/frame_00.png ... one PNG per frame
    DIR/clips/000000.gif              the clip as an animated GIF (100 ms a frame)
    DIR/clips.json                    {"videos": [{id, file_names, gif, width, height, length, caption,
                                                   prompt, questions: [{question, answer}], motions,
                                                   scene (frame 0, enough to re-render)}],
                                       "annotations": [{id, video_id, object_id, category_id, category,
                                                        colour, size, moving, direction,
                                                        segmentations: [RLE per frame], bboxes, areas,
                                                        centres}],
                                       "categories": [{id, name, supercategory}]}

Masks are the visible pixels of each object in each frame (COCO RLE), boxes COCO ``[x, y, w, h]``,
centres the object's integer centre in that frame.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .masks import encode_rle
from .motion import (
    DEFAULT_MOTION_HOLDOUT, Clip, Motion, clip_caption, generation_prompt, motion_questions, render_clip, sample_clip,
)
from .scene import Scene, WorldConfig
from .vocab import CATEGORIES, CATEGORY_ID, WORLD_VERSION

GIF_MS_PER_FRAME = 100


@dataclass(frozen=True)
class ClipSummary:
    out_dir: Path
    split: str
    n: int
    frames: int
    seconds: float


def clip_record(clip: Clip, name: str) -> tuple[dict[str, Any], list[dict[str, Any]], list[np.ndarray]]:
    """(the ``videos`` entry, its ``annotations``, the frames as arrays)."""
    renderings = render_clip(clip)
    moving = {m.object_id: m for m in clip.motions}
    video = {"id": clip.scene.index, "name": name,
             "file_names": [f"clips/{name}/frame_{t:02d}.png" for t in range(clip.frames)],
             "gif": f"clips/{name}.gif", "width": clip.scene.width, "height": clip.scene.height,
             "length": clip.frames, "caption": clip_caption(clip), "prompt": generation_prompt(clip),
             "questions": [{"question": q, "answer": a} for q, a in motion_questions(clip)],
             "motions": [m.to_json() for m in clip.motions], "scene": clip.scene.to_json()}
    annotations = []
    for i, o in enumerate(clip.scene.objects):
        anns = [r.objects[i] for r in renderings]
        m = moving.get(o.id)
        annotations.append({
            "video_id": clip.scene.index, "object_id": o.id, "category_id": CATEGORY_ID[o.category],
            "category": o.category, "colour": o.colour, "size": o.size, "moving": m is not None,
            "direction": None if m is None else m.direction,
            "segmentations": [encode_rle(r.visible_mask(i)) for r in renderings],
            "bboxes": [[int(v) for v in a.bbox] for a in anns], "areas": [int(a.area) for a in anns],
            "centres": [[f.object(o.id).x, f.object(o.id).y] for f in (clip.frame(t) for t in range(clip.frames))],
        })
    return video, annotations, [r.image for r in renderings]


def write_clips(*, out_dir: str | Path, n: int, seed: int = 0, split: str = "train", frames: int = 8,
                config: WorldConfig | None = None,
                holdout: tuple[tuple[str, str, str], ...] = DEFAULT_MOTION_HOLDOUT,
                overwrite: bool = False) -> ClipSummary:
    """Write clips 0..n-1 of ``split`` into ``out_dir`` (see the module docstring)."""
    config = config or WorldConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; choose an empty directory or pass overwrite=True (--overwrite)")
        if not (out / "meta.json").is_file() or json.loads((out / "meta.json").read_text()).get("kind") != "clips":
            raise FileExistsError(f"{out} holds something other than a clip split; refusing to overwrite it")
        shutil.rmtree(out)
    start = time.perf_counter()
    (out / "clips").mkdir(parents=True, exist_ok=True)
    videos, annotations = [], []
    for index in range(n):
        clip = sample_clip(config=config, seed=seed, split=split, index=index, frames=frames, holdout=holdout)
        name = f"{index:06d}"
        video, anns, images = clip_record(clip, name)
        folder = out / "clips" / name
        folder.mkdir()
        for t, image in enumerate(images):
            Image.fromarray(image).save(folder / f"frame_{t:02d}.png", compress_level=1)
        pil = [Image.fromarray(image) for image in images]
        pil[0].save(out / video["gif"], save_all=True, append_images=pil[1:], duration=GIF_MS_PER_FRAME, loop=0)
        videos.append(video)
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, **ann})
    categories = [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in CATEGORIES if c.isthing]
    (out / "clips.json").write_text(json.dumps({"videos": videos, "annotations": annotations,
                                                "categories": categories}))
    meta = {"kind": "clips", "split": split, "n": n, "seed": seed, "frames": frames, "size": config.size,
            "world_version": WORLD_VERSION, "motion_holdout": [list(t) for t in holdout],
            "image_holdout": [list(p) for p in config.holdout]}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return ClipSummary(out_dir=out, split=split, n=n, frames=frames, seconds=time.perf_counter() - start)


def read_clips(root: str | Path) -> list[Clip]:
    """The clips of a split written by :func:`write_clips`, rebuilt from their frame-0 scenes and motions."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{root} has no meta.json: write a clip split with `omniplug world clips --out {root}`")
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != "clips":
        raise ValueError(f"{root} is not a clip split (meta.json kind {meta.get('kind')!r}); "
                         f"images come from `omniplug world generate`, clips from `omniplug world clips`")
    data = json.loads((root / "clips.json").read_text())
    return [Clip(scene=Scene.from_json(v["scene"]), frames=int(v["length"]),
                 motions=tuple(Motion(object_id=int(m["object_id"]), direction=m["direction"],
                                      step=int(m["pixels_per_frame"])) for m in v["motions"]))
            for v in data["videos"]]


# --- pictures ------------------------------------------------------------------------------------------------
def contact_sheet(clips: list[list[np.ndarray]], captions: list[str], *, zoom: int = 2) -> Image.Image:
    """One row per clip: its frames left to right, the caption under them."""
    from PIL import ImageDraw

    if not clips:
        raise ValueError("no clips to draw")
    side = clips[0][0].shape[0] * zoom
    frames = max(len(c) for c in clips)
    row_h = side + 18
    sheet = Image.new("RGB", (frames * (side + 2) + 4, len(clips) * (row_h + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (clip, text) in enumerate(zip(clips, captions)):
        y = 4 + r * (row_h + 4)
        for t, frame in enumerate(clip):
            sheet.paste(Image.fromarray(frame).resize((side, side), Image.NEAREST), (4 + t * (side + 2), y))
        draw.text((4, y + side + 3), text, fill="black")
    return sheet


def grid_gif(clips: list[list[np.ndarray]], path: str | Path, *, columns: int = 4, zoom: int = 2) -> Path:
    """The clips side by side as one animated GIF (a tile per clip, all playing together)."""
    side = clips[0][0].shape[0] * zoom
    rows = (len(clips) + columns - 1) // columns
    length = max(len(c) for c in clips)
    pictures = []
    for t in range(length):
        canvas = Image.new("RGB", (columns * (side + 4) + 4, rows * (side + 4) + 4), "white")
        for k, clip in enumerate(clips):
            frame = clip[min(t, len(clip) - 1)]
            canvas.paste(Image.fromarray(frame).resize((side, side), Image.NEAREST),
                         (4 + (k % columns) * (side + 4), 4 + (k // columns) * (side + 4)))
        pictures.append(canvas)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pictures[0].save(path, save_all=True, append_images=pictures[1:], duration=2 * GIF_MS_PER_FRAME, loop=0)
    return path


def write_clip_examples(out_stem: str | Path, *, n: int = 8, seed: int = 0, split: str = "train",
                        config: WorldConfig | None = None) -> tuple[Path, Path]:
    """``<out_stem>.png`` (contact sheet) and ``<out_stem>.gif`` (the clips playing in a grid)."""
    config = config or WorldConfig()
    clips = [sample_clip(config=config, seed=seed, split=split, index=i) for i in range(n)]
    frames = [[r.image for r in render_clip(c)] for c in clips]
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png = stem.with_suffix(".png")
    contact_sheet(frames, [clip_caption(c) for c in clips]).save(png)
    return png, grid_gif(frames, stem.with_suffix(".gif"))


def mover_phrase(clip: Clip, index: int = 0) -> str:
    """How a request names the clip's ``index``-th mover: its shortest unique frame-0 referring expression
    ("the red circle", "the car"), else its colour and category."""
    from .language import short_ref

    mover = clip.mover(clip.motions[index])
    ref = short_ref(clip.scene, mover)
    if ref is not None:
        return ref.text()
    return f"the {mover.category}" if mover.is_composite else f"the {mover.colour} {mover.category}"


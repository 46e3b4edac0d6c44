"""Turning a ``Response`` into files: one PNG per mask, a coloured overlay (plain and with the mask
labels drawn), the generated images, the boxes drawn on the image, and ``response.json``.

Boxes: a decoder of kind ``boxes`` may return, per box, 4 numbers ``(x0, y0, x1, y1)`` in pixels
of the request's first image, a mapping with ``box``/``bbox``/``xyxy`` and optional ``label`` and
``score``, or an object with such attributes.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from omniplug.types import Mask, Response

#: distinct colours, reused in order (mask i gets PALETTE[i % len])
PALETTE: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (145, 30, 180),
    (245, 130, 48), (70, 240, 240), (240, 50, 230), (210, 245, 60), (0, 128, 128),
)


@dataclass
class SavedMask:
    path: str
    label: str | None
    area: int  # pixels in the mask


def mask_image(mask: Mask) -> Image.Image:
    """A mask as an 8-bit PNG-ready image: 255 inside, 0 outside."""
    return Image.fromarray(np.asarray(mask.mask, dtype=bool).astype(np.uint8) * 255, mode="L")


def overlay(image: Image.Image, masks: list[Mask], *, alpha: float = 0.5) -> Image.Image:
    """``image`` with each mask blended in its own colour (``alpha`` opacity)."""
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    out = base.copy()
    for i, m in enumerate(masks):
        sel = np.asarray(m.mask, dtype=bool)
        if sel.shape != base.shape[:2]:
            raise ValueError(f"mask {i + 1} is {sel.shape} but the image is {base.shape[:2]}")
        colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
        out[sel] = (1 - alpha) * out[sel] + alpha * colour
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB")


def save_masks(masks: list[Mask], image: Image.Image | None, out_dir: str | Path, *,
               prefix: str = "mask") -> tuple[list[SavedMask], Path | None]:
    """Write ``{prefix}_{i}.png`` for each mask (from 1) and ``overlay.png`` when ``image`` is given."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    saved = []
    for i, m in enumerate(masks, start=1):
        path = out / f"{prefix}_{i}.png"
        mask_image(m).save(path)
        saved.append(SavedMask(path=str(path), label=m.label, area=int(np.asarray(m.mask, dtype=bool).sum())))
    overlay_path = None
    if image is not None:
        overlay_path = out / "overlay.png"
        overlay(image, masks).save(overlay_path)
    return saved, overlay_path


# --- labelled pictures ----------------------------------------------------------------------------
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _upscaled(image: Image.Image, min_side: int) -> tuple[Image.Image, int]:
    """``image`` enlarged by a whole factor (nearest neighbour) until its short side is >= ``min_side``,
    so that drawn text stays legible on small images; returns it and the factor."""
    factor = max(1, -(-min_side // max(1, min(image.size))))
    if factor == 1:
        return image.copy(), 1
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST), factor


def _tag(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, colour: tuple[int, int, int],
         font: ImageFont.ImageFont, bounds: tuple[int, int], placed: list[tuple[float, float, float, float]]) -> None:
    """``text`` on a filled box of ``colour`` with its top-left corner at ``xy``, kept inside ``bounds``
    and moved down (or up) past the tags already ``placed`` (appended to) when it would cover one."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    w, h = right - left + 4, bottom - top + 4
    x = min(max(0.0, xy[0]), max(0.0, bounds[0] - w))
    y0 = min(max(0.0, xy[1]), max(0.0, bounds[1] - h))

    def free(y: float) -> bool:
        return 0 <= y <= bounds[1] - h and all(x + w <= a or a2 <= x or y + h <= b or b2 <= y for a, b, a2, b2 in placed)

    y = next((c for k in range(int(bounds[1] // h) + 1) for c in (y0 + k * h, y0 - k * h) if free(c)), y0)
    placed.append((x, y, x + w, y + h))
    draw.rectangle((x, y, x + w, y + h), fill=colour)
    ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
    draw.text((x + 2 - left, y + 2 - top), text, fill=ink, font=font)


def mask_caption(i: int, mask: Mask) -> str:
    """How mask ``i`` (from 1) is named in pictures: ``"1: the red circle"`` or ``"1"``."""
    return f"{i}: {mask.label}" if mask.label else str(i)


def labelled_overlay(image: Image.Image, masks: list[Mask], *, alpha: float = 0.5, min_side: int = 256) -> Image.Image:
    """The overlay of ``masks`` on ``image``, enlarged to a legible size, each mask tagged with its
    number and label in its colour, centred on the mask's pixel nearest to its centroid."""
    canvas, factor = _upscaled(overlay(image, masks, alpha=alpha), min_side)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, min(canvas.size) // 24))
    placed: list[tuple[float, float, float, float]] = []
    for i, m in enumerate(masks):
        ys, xs = np.nonzero(np.asarray(m.mask, dtype=bool))
        if not len(xs):
            continue
        k = int(np.argmin((xs - xs.mean()) ** 2 + (ys - ys.mean()) ** 2))
        text = mask_caption(i + 1, m)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        centre = ((xs[k] + 0.5) * factor, (ys[k] + 0.5) * factor)
        _tag(draw, (centre[0] - (right - left + 4) / 2, centre[1] - (bottom - top + 4) / 2), text,
             PALETTE[i % len(PALETTE)], font, canvas.size, placed)
    return canvas


def box_parts(box: Any) -> tuple[tuple[float, float, float, float], str | None, float | None]:
    """``((x0, y0, x1, y1), label, score)`` of one box in any of the accepted forms (module docstring)."""
    label = score = None
    coords = box
    if isinstance(box, Mapping):
        coords = next((box[k] for k in ("box", "bbox", "xyxy") if k in box), None)
        label, score = box.get("label"), box.get("score")
    elif not isinstance(box, (list, tuple, np.ndarray)) and not hasattr(box, "tolist"):
        coords = next((getattr(box, k) for k in ("box", "bbox", "xyxy") if hasattr(box, k)), None)
        label, score = getattr(box, "label", None), getattr(box, "score", None)
    values = np.asarray(coords.tolist() if hasattr(coords, "tolist") else coords, dtype=float).reshape(-1) \
        if coords is not None else np.zeros(0)
    if values.shape != (4,):
        raise ValueError(f"a box must be 4 numbers (x0, y0, x1, y1) or carry them as box/bbox/xyxy, got {box!r}")
    x0, y0, x1, y1 = values.tolist()
    return (x0, y0, x1, y1), None if label is None else str(label), None if score is None else float(score)


def draw_boxes(image: Image.Image, boxes: list[Any], *, min_side: int = 256) -> Image.Image:
    """``image`` (enlarged to a legible size) with each box outlined in its colour and tagged with its
    number, label and score."""
    canvas, factor = _upscaled(image.convert("RGB"), min_side)
    draw = ImageDraw.Draw(canvas)
    font = _font(max(10, min(canvas.size) // 24))
    width = max(1, min(canvas.size) // 128)
    placed: list[tuple[float, float, float, float]] = []
    for i, box in enumerate(boxes):
        (x0, y0, x1, y1), label, score = box_parts(box)
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle((x0 * factor, y0 * factor, x1 * factor, y1 * factor), outline=colour, width=width)
        text = str(i + 1) + (f": {label}" if label else "") + (f" {score:.2f}" if score is not None else "")
        _tag(draw, (x0 * factor, y0 * factor), text, colour, font, canvas.size, placed)
    return canvas


# --- one response as files ------------------------------------------------------------------------
def jsonable(value: Any) -> Any:
    """``value`` with arrays, tensors, dataclasses and paths turned into plain JSON values."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return repr(value)


def clip_sheet(frames: list[Image.Image], *, min_side: int = 128) -> Image.Image:
    """A clip's frames left to right, each enlarged to at least ``min_side`` pixels (nearest neighbour)."""
    w, h = frames[0].size
    zoom = max(1, -(-min_side // min(w, h)))
    sheet = Image.new("RGB", (len(frames) * (w * zoom + 2) - 2, h * zoom), "white")
    for t, frame in enumerate(frames):
        sheet.paste(frame.convert("RGB").resize((w * zoom, h * zoom), Image.Resampling.NEAREST), (t * (w * zoom + 2), 0))
    return sheet


def save_clip(frames: list[Image.Image], stem: Path, *, ms_per_frame: int = 125) -> dict[str, Any]:
    """``<stem>.gif`` (plays in any browser), ``<stem>.png`` (contact sheet) and ``<stem>.mp4`` when an MP4
    encoder is installed (imageio with imageio-ffmpeg); returns their paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    frames = [f.convert("RGB") for f in frames]
    gif, sheet = stem.with_suffix(".gif"), stem.with_suffix(".png")
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    clip_sheet(frames).save(sheet)
    mp4 = None
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (the MP4 writer imageio needs)
    except ImportError:
        pass
    else:
        mp4 = stem.with_suffix(".mp4")
        side = [(-(-s // 16)) * 16 for s in frames[0].size]  # codecs want sizes in multiples of 16
        imageio.mimwrite(mp4, [np.asarray(f.resize(side, Image.Resampling.NEAREST)) for f in frames],
                         fps=max(1, round(1000 / ms_per_frame)))
    return {"gif": str(gif), "sheet": str(sheet), "mp4": str(mp4) if mp4 else None, "frames": len(frames)}


def save_response(response: Response, image: Image.Image | None, out_dir: str | Path, *,
                  images: list[Image.Image] | None = None) -> dict[str, Any]:
    """Write every output of ``response`` into ``out_dir`` and return what ``response.json`` holds:
    ``mask_<i>.png``, ``overlay.png`` and ``overlay_labelled.png`` (masks on ``image``, the request's
    first image), ``overlay_frames.png`` (with ``images``, the request's images, when masks are on several of them:
    each image with its own masks, side by side), ``image_<i>.png`` (generated images), ``boxes.png`` (boxes drawn
    on ``image``), ``clip_<i>.gif`` / ``.png`` (+ ``.mp4``) for generated clips (:func:`save_clip`)."""
    out = Path(out_dir).expanduser()
    first = [m for m in response.masks if m.image == 0]
    saved, _ = save_masks(response.masks, None, out)
    overlay_path = labelled_path = frames_path = None
    if first and image is not None:
        overlay_path, labelled_path = out / "overlay.png", out / "overlay_labelled.png"
        overlay(image, first).save(overlay_path)
        labelled_overlay(image, first).save(labelled_path)
    if images and len(images) > 1 and any(m.image > 0 for m in response.masks):
        frames_path = out / "overlay_frames.png"
        tiles = [overlay(im, [m for m in response.masks if m.image == k]) for k, im in enumerate(images)]
        sheet = Image.new("RGB", (sum(t.width + 2 for t in tiles), max(t.height for t in tiles)), "white")
        x = 0
        for tile in tiles:
            sheet.paste(tile.convert("RGB"), (x, 0))
            x += tile.width + 2
        sheet.save(frames_path)
    image_paths = []
    for i, generated in enumerate(response.images, start=1):
        image_paths.append(out / f"image_{i}.png")
        generated.save(image_paths[-1])
    videos = [save_clip(frames, out / f"clip_{i}") for i, frames in enumerate(response.videos, start=1)]
    boxes_path = None
    boxes = [dict(zip(("box", "label", "score"), box_parts(b))) for b in response.boxes]
    if response.boxes and image is not None:
        boxes_path = out / "boxes.png"
        draw_boxes(image, response.boxes).save(boxes_path)
    record = {
        "text": response.text,
        "masks": [{"path": s.path, "label": s.label, "area": s.area, "score": round(float(m.score), 4), "image": m.image}
                  for s, m in zip(saved, response.masks)],
        "overlay": str(overlay_path) if overlay_path else None,
        "overlay_labelled": str(labelled_path) if labelled_path else None,
        "overlay_frames": str(frames_path) if frames_path else None,
        "images": [str(p) for p in image_paths],
        "boxes": jsonable(boxes),
        "boxes_image": str(boxes_path) if boxes_path else None,
        "actions": jsonable(response.actions),
        "videos": videos,
        "extra": jsonable(response.extra),
        "timings": {k: round(v, 4) for k, v in response.timings.items()},
    }
    (out / "response.json").write_text(json.dumps(record, indent=2))
    return record

"""Turning a ``Response``'s masks into files: one PNG per mask and a coloured overlay."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from omniplug.types import Mask

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

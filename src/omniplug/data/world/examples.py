"""A picture of the world for the docs: scenes next to their panoptic segmentation and caption."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .language import caption
from .render import render_scene
from .scene import WorldConfig, sample_scene


def example_grid(*, n: int = 16, seed: int = 0, split: str = "train", config: WorldConfig | None = None,
                 columns: int = 4, zoom: int = 3) -> Image.Image:
    """``n`` scenes, each shown as image | panoptic segments (one random colour per segment) | caption."""
    config = config or WorldConfig()
    side = config.size * zoom
    text_h = 56
    tile_w, tile_h = 2 * side + 6, side + text_h
    rows = (n + columns - 1) // columns
    grid = Image.new("RGB", (columns * (tile_w + 8), rows * (tile_h + 8)), "white")
    colours = np.random.default_rng(0).integers(40, 256, size=(512, 3)).astype(np.uint8)
    for k in range(n):
        r = render_scene(sample_scene(config=config, seed=seed, split=split, index=k))
        seg = colours[r.panoptic_ids() % len(colours)]
        tile = Image.new("RGB", (tile_w, tile_h), "white")
        tile.paste(Image.fromarray(r.image).resize((side, side), Image.NEAREST), (0, 0))
        tile.paste(Image.fromarray(seg).resize((side, side), Image.NEAREST), (side + 6, 0))
        lines = textwrap.wrap(caption(r.scene), width=(tile_w // 6) - 1)[:4]
        ImageDraw.Draw(tile).multiline_text((2, side + 3), "\n".join(lines), fill="black", spacing=2)
        grid.paste(tile, ((k % columns) * (tile_w + 8) + 4, (k // columns) * (tile_h + 8) + 4))
    return grid


def write_example_grid(path: str | Path, **kwargs) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    example_grid(**kwargs).save(out, format="PNG")
    return out

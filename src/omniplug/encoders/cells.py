"""Encoder ``cells``: a grid world's frame read as one token per cell through a symbolic parser.

A from-scratch ViT learning to see from an action loss alone never separates "red key" from "red
ball" in the 8x8 pixels of a BabyAI cell: the policy lowers its loss from layout alone and ignores
its mission (bench/actions/README.md). PaLM-E feeds its LLM object-centric and state-estimate
encoders for exactly such scenes; this encoder is that idea for grid worlds:

    frame (H, W, 3) --CellParser--> per cell, class probabilities of each attribute
                                     (minigrid: object 11, colour 6, state 3)
                    --tables-----> sum over attributes of probabilities @ one learned vector per class
                                   + a learned vector per cell position (as ViT's position embedding)
                    -> (cells, dim) tokens, in raster order, for the input projector

The parser is a small per-cell CNN trained with dense labels (the symbolic grids stored with
BabyAI demonstrations): ``omniplug demos parser --data DIR --out DIR``. It sees pixels only; the
tokens are what a symbolic agent would get, so the LLM binds the mission's words to cells at once.
``freeze_parser: true`` (default) keeps the parser's classes fixed while the tables and everything
after them train.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from omniplug.encoders._perception import PerceptionEncoder, load_net, save_net, to_pixels
from omniplug.registry import ENCODERS
from omniplug.types import ImageFeatures

# minigrid's symbolic cell: OBJECT_TO_IDX (11), COLOR_TO_IDX (6), STATE_TO_IDX (3)
MINIGRID_ATTRIBUTES = {"object": 11, "colour": 6, "state": 3}


@dataclass
class CellParserConfig:
    image_size: int = 56
    cell: int = 8  # pixels per cell side
    attributes: dict[str, int] = field(default_factory=lambda: dict(MINIGRID_ATTRIBUTES))
    width: int = 128

    def __post_init__(self) -> None:
        if self.image_size % self.cell:
            raise ValueError(f"image_size {self.image_size} is not a multiple of cell {self.cell}")
        if not self.attributes or any(n < 2 for n in self.attributes.values()):
            raise ValueError(f"attributes need at least one entry with >= 2 classes each, got {self.attributes}")

    @property
    def side(self) -> int:
        return self.image_size // self.cell


class CellParser(nn.Module):
    """Pixels -> per-cell logits of every attribute: a CNN whose first layer sees exactly one cell."""

    def __init__(self, config: CellParserConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        self.body = nn.Sequential(nn.Conv2d(3, 2 * w, config.cell, config.cell), nn.GELU(),
                                  nn.Conv2d(2 * w, w, 1), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Conv2d(w, n, 1) for name, n in config.attributes.items()})

    def forward(self, pixels: Tensor) -> dict[str, Tensor]:
        """(N, 3, H, W) in [0, 1] -> {attribute: (N, classes, side, side)}."""
        h = self.body(pixels)
        return {name: head(h) for name, head in self.heads.items()}

    def save(self, out: str | Path) -> Path:
        return save_net(self, self.config, out, "parser")

    @classmethod
    def load(cls, path: str | Path) -> "CellParser":
        return load_net(cls, CellParserConfig, path, "parser", what="cell parser",
                        command="omniplug demos parser --data DEMOS_DIR")


def frames_to_pixels(frames: list[np.ndarray] | np.ndarray, image_size: int) -> Tensor:
    """uint8 (H, W, 3) frames -> (N, 3, image_size, image_size) floats in [0, 1]."""
    images = [Image.fromarray(np.asarray(f)).convert("RGB") for f in frames]
    return pil_to_pixels(images, image_size)


def pil_to_pixels(images: list[Image.Image], image_size: int) -> Tensor:
    return to_pixels(images, image_size, Image.NEAREST)  # cells stay crisp


@ENCODERS.register("cells")
class CellsEncoder(PerceptionEncoder):
    """One token per grid cell: the parser's class probabilities times a learned vector per class.

    ``parser``: a directory written by ``omniplug demos parser`` (required unless ``from_scratch``,
    which starts a random parser that trains with the rest: only useful for tests and ablations).
    """

    def __init__(self, *, parser: str | None = None, dim: int = 128, freeze: bool = False,
                 freeze_parser: bool = True, from_scratch: bool = False,
                 image_size: int = 56, cell: int = 8) -> None:
        super().__init__()
        if parser is None and not from_scratch:
            raise ValueError("encoder cells needs `parser: DIR` (train one with `omniplug demos parser --data DEMOS "
                             "--out DIR`) or `from_scratch: true`")
        self.parser = (CellParser(CellParserConfig(image_size=image_size, cell=cell)) if parser is None
                       else CellParser.load(parser))
        self.net_name, self.freeze, self.frozen_net = "parser", freeze, freeze_parser and parser is not None
        config = self.parser.config
        self.image_size = config.image_size
        self.tables = nn.ModuleDict({name: nn.Embedding(n, dim) for name, n in config.attributes.items()})
        # where a cell is must be in its token: a RoPE LLM's attention returns what it attends to, not where
        self.position = nn.Parameter(torch.randn(config.side ** 2, dim))
        self.out_dim = dim
        self.num_tokens = config.side ** 2
        self.requires_grad_(True)

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return pil_to_pixels(images, self.image_size)

    def forward(self, pixel_values: Tensor) -> ImageFeatures:
        probs = {name: logits.softmax(1) for name, logits in self.perceive(pixel_values).items()}
        dtype = self.tables[next(iter(self.tables))].weight.dtype
        dense = sum(torch.einsum("nchw,cd->ndhw", p.to(dtype), self.tables[name].weight) for name, p in probs.items())
        tokens = dense.flatten(2).transpose(1, 2) + self.position.to(dtype)
        side = self.parser.config.side
        return ImageFeatures(tokens=tokens, dense=tokens.transpose(1, 2).reshape(len(tokens), -1, side, side))

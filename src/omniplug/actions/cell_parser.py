"""Train the ``cells`` encoder's parser from demonstrations that carry symbolic grids.

    omniplug demos parser --data data/babyai/gotolocal --out configs/babyai/parser

Every frame of an episode comes with the environment's symbolic view (BabyAI agent view:
minigrid's (7, 7, 3) grid, indexed [x, y]); the parser learns, per cell, the class of every
attribute from the cell's pixels. Held-out episodes (the last ``val_episodes`` of the index, the
same split as the ``demos`` dataset) give the accuracy figures: per attribute and "all attributes of
a cell right".
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from omniplug.actions.episodes import read_episode, read_index, split_records
from omniplug.encoders.cells import CellParser, CellParserConfig, frames_to_pixels


@dataclass
class ParserReport:
    out: Path
    frames: int
    steps: int
    seconds: float
    cell_accuracy: float  # every attribute of a cell right, held-out episodes
    attribute_accuracy: dict[str, float]


def load_cells(data_dir: str | Path, split: str, *, val_episodes: int, max_episodes: int | None,
               attributes: list[str], image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) pixels and (N, attributes, side, side) labels of every frame of the split."""
    records = split_records(read_index(data_dir), split, val_episodes)[:max_episodes]
    frames, grids = [], []
    for record in records:
        episode = read_episode(data_dir, record)
        if episode.grids is None:
            raise ValueError(f"{data_dir}/{record.file} has no symbolic grids; collect the demonstrations with "
                             f"`omniplug demos collect --env babyai-... --option view=agent`")
        frames.append(episode.frames)
        grids.append(episode.grids)
    if not frames:
        raise ValueError(f"no episodes in the {split!r} split of {data_dir} (val_episodes={val_episodes})")
    grid = np.concatenate(grids)
    if grid.ndim != 4 or grid.shape[-1] != len(attributes):
        raise ValueError(f"grids of shape {grid.shape[1:]} do not match the parser's attributes {attributes}")
    labels = torch.from_numpy(grid.astype(np.int64)).permute(0, 3, 2, 1)  # [x, y, attr] -> [attr, row=y, col=x]
    return frames_to_pixels(np.concatenate(frames), image_size), labels.contiguous()


def accuracy(parser: CellParser, pixels: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> dict[str, float]:
    names = list(parser.config.attributes)
    right = {name: 0 for name in names}
    every = 0
    with torch.no_grad():
        for i in range(0, len(pixels), batch):
            logits = parser(pixels[i: i + batch])
            hits = torch.stack([logits[n].argmax(1) == labels[i: i + batch, k] for k, n in enumerate(names)])
            for k, name in enumerate(names):
                right[name] += int(hits[k].sum())
            every += int(hits.all(0).sum())
    cells = labels[:, 0].numel()
    return {"all": every / cells, **{name: r / cells for name, r in right.items()}}


def train_cell_parser(data_dir: str | Path, out: str | Path, *, steps: int = 1000, batch_size: int = 64,
                      lr: float = 1e-3, val_episodes: int = 100, max_episodes: int | None = 4000, seed: int = 0,
                      config: CellParserConfig | None = None) -> ParserReport:
    config = config or CellParserConfig()
    names = list(config.attributes)
    torch.manual_seed(seed)
    start = time.perf_counter()
    pixels, labels = load_cells(data_dir, "train", val_episodes=val_episodes, max_episodes=max_episodes,
                                attributes=names, image_size=config.image_size)
    for k, (name, n) in enumerate(config.attributes.items()):
        if int(labels[:, k].max()) >= n:
            raise ValueError(f"attribute {name!r} has label {int(labels[:, k].max())} but the parser has {n} classes")
    parser = CellParser(config)
    opt = torch.optim.AdamW(parser.parameters(), lr=lr, weight_decay=0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        logits = parser(pixels[idx])
        loss = sum(F.cross_entropy(logits[n], labels[idx, k]) for k, n in enumerate(names))
        opt.zero_grad()
        loss.backward()
        opt.step()
    parser.eval()
    if val_episodes:
        val_pixels, val_labels = load_cells(data_dir, "val", val_episodes=val_episodes, max_episodes=None,
                                            attributes=names, image_size=config.image_size)
    else:
        val_pixels, val_labels = pixels, labels
    acc = accuracy(parser, val_pixels, val_labels)
    path = parser.save(out)
    return ParserReport(out=path, frames=len(pixels), steps=steps, seconds=time.perf_counter() - start,
                        cell_accuracy=acc.pop("all"), attribute_accuracy=acc)

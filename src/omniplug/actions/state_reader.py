"""Train the ``state`` encoder's reader from demonstrations that carry states.

    omniplug demos reader --data data/reacher/demos --out configs/reacher/reader

Every frame comes with the state it shows (``states`` in the episode files: Reacher's cos/sin of
both joints and the target's x, y); the reader regresses the standardised state from the pixels
(mean squared error). Held-out episodes (the last ``val_episodes`` of each folder's index, the ``demos``
split) give the error per state dimension in the state's own units.

``--standardise-like DIR`` keeps another reader's standardisation (its state mean and std): the new reader's
estimates then mean what the old one's meant to an agent trained on it, and it can replace that reader under the
agent without retraining it (e.g. a reader that sees what the old one missed).

Several folders (``--data A --data B``) train one reader on all their frames: give it the DAgger rounds
too, not the expert's demonstrations alone. A reader that has only seen the expert's driving misreads the
states a learner reaches (highway: in the frames the agent drove itself, a car within 10 m ahead in its lane
goes unseen in every frame and one within 25 m in about half, since the expert never comes that close;
bench/actions/README.md), and the agent brakes late on its own misreading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from omniplug.actions.episodes import read_episode, read_index, split_records
from omniplug.encoders._perception import to_pixels
from omniplug.encoders.state import StateReader, StateReaderConfig


@dataclass
class ReaderReport:
    out: Path
    frames: int
    steps: int
    seconds: float
    mae: list[float]  # per state dimension, held-out frames, state units
    baseline_mae: list[float]  # predicting the training mean


def load_states(data_dir: str | Path | list[str | Path], split: str, *, val_episodes: int,
                max_episodes: int | None, image_size: int,
                image_width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames as pixels and their states, from one folder or several (``split`` of each; ``max_episodes`` per
    folder)."""
    dirs = [data_dir] if isinstance(data_dir, (str, Path)) else list(data_dir)
    pixels, states = [], []
    for folder in dirs:
        records = split_records(read_index(folder), split, val_episodes)[:max_episodes]
        frames = []
        for record in records:
            episode = read_episode(folder, record)
            if episode.states is None:
                raise ValueError(f"{folder}/{record.file} has no states; collect the demonstrations again with an "
                                 f"environment that reports them (e.g. `omniplug demos collect --env reacher`)")
            frames.extend(Image.fromarray(f) for f in episode.frames)
            states.append(episode.states)
        if frames:  # converted folder by folder: only pixels stay in memory
            pixels.append(to_pixels(frames, image_size, width=image_width))
    if not pixels:
        raise ValueError(f"no episodes in the {split!r} split of {', '.join(map(str, dirs))} "
                         f"(val_episodes={val_episodes})")
    widths = {s.shape[1] for s in states}
    if len(widths) > 1:
        raise ValueError(f"the folders' states differ in size ({sorted(widths)}): train a reader on demonstrations "
                         f"of one environment")
    return torch.cat(pixels), torch.from_numpy(np.concatenate(states).astype(np.float32))


def _px(height: int, width: int | None) -> str:
    return f"{height} px" if width is None else f"{height} x {width} px"


def _frame_size(data_dir: str | Path | list[str | Path]) -> tuple[int, int | None]:
    """(64, None) for square frames; (height, width) of the first folder's first frame otherwise."""
    folder = data_dir if isinstance(data_dir, (str, Path)) else list(data_dir)[0]
    records = read_index(folder)
    if not records:
        raise ValueError(f"{folder} holds no episodes")
    height, width = read_episode(folder, records[0]).frames.shape[1:3]
    if height == width:
        return 64, None
    if height % 8 or width % 8:
        raise ValueError(f"the frames in {folder} are {height} x {width} px: a reader needs both divisible by 8 "
                         f"(collect them with such a size, e.g. highway's image_size / image_width)")
    return int(height), int(width)


def train_state_reader(data_dir: str | Path | list[str | Path], out: str | Path, *, steps: int = 3000, batch_size: int = 64,
                       lr: float = 1e-3, val_episodes: int = 20, max_episodes: int | None = None, seed: int = 0,
                       image_size: int | None = None, image_width: int | None = None, width: int = 64,
                       standardise_like: str | Path | None = None) -> ReaderReport:
    """``image_size`` / ``image_width``: the pixels the reader reads; by default 64 x 64 for square frames and the
    frames' own size for others (a wide view squeezed square would lose the cars far ahead)."""
    torch.manual_seed(seed)
    start = time.perf_counter()
    if image_size is None:
        image_size, image_width = _frame_size(data_dir)
    pixels, states = load_states(data_dir, "train", val_episodes=val_episodes, max_episodes=max_episodes,
                                 image_size=image_size, image_width=image_width)
    mean, std = states.mean(0), states.std(0).clamp_min(1e-6)
    if standardise_like is not None:
        like = StateReader.load(standardise_like).config
        if like.state_dim != states.shape[1] or (like.image_size, like.image_width) != (image_size, image_width):
            raise ValueError(f"standardise_like: the reader in {standardise_like} reads {like.state_dim} state "
                             f"dimensions from {_px(like.image_size, like.image_width)} frames, these demonstrations "
                             f"have {states.shape[1]} at {_px(image_size, image_width)}")
        mean, std = torch.tensor(like.mean), torch.tensor(like.std).clamp_min(1e-6)
    reader = StateReader(StateReaderConfig(state_dim=states.shape[1], image_size=image_size, width=width,
                                           mean=mean.tolist(), std=std.tolist(), image_width=image_width))
    target = reader.standardise(states)
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1), eta_min=lr * 0.01)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(pixels), (batch_size,), generator=gen)
        loss = F.mse_loss(reader(pixels[idx]), target[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    reader.eval()
    if val_episodes:
        val_pixels, val_states = load_states(data_dir, "val", val_episodes=val_episodes, max_episodes=None,
                                             image_size=image_size, image_width=image_width)
    else:
        val_pixels, val_states = pixels, states
    with torch.no_grad():
        predicted = torch.cat([reader(val_pixels[i: i + 512]) for i in range(0, len(val_pixels), 512)]) * std + mean
    path = reader.save(out)
    return ReaderReport(out=path, frames=len(pixels), steps=steps, seconds=time.perf_counter() - start,
                        mae=(predicted - val_states).abs().mean(0).tolist(),
                        baseline_mae=(mean - val_states).abs().mean(0).tolist())

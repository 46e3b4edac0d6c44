"""Dataset ``babyai_where``: grounding questions on BabyAI demonstrations, for co-training an agent.

An action-only policy trained from scratch can lower its loss from the image alone (walk forward,
turn at walls) and never learn to read *which* object the mission names: the binding of words to
what is seen gets no gradient it cannot do without. RT-2 co-trains its actions with vision-language
data; here the same frames teach the binding directly, with a question whose answer needs both::

    user:       [frame] where is the red key?
    assistant:  2 ahead 1 right          (or "here", "not in view")

Answers come from the symbolic view stored with each frame (``grids`` in the episode files:
``omniplug demos collect --env babyai-... --option view=agent`` writes them): the nearest cell
holding an object of the mission's colour and type, in steps ahead of the agent and to its side.
Episodes are split like the ``demos`` dataset (``val_episodes`` at the end are ``split: val``).
"""

from __future__ import annotations

import re
from typing import Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from omniplug.actions.episodes import read_episode, read_index, split_records
from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS

# minigrid's encoding (minigrid.core.constants), fixed by its observation format
OBJECTS = {"key": 5, "ball": 6, "box": 7, "door": 4}
COLOURS = {"red": 0, "green": 1, "blue": 2, "purple": 3, "yellow": 4, "grey": 5}
AGENT_CELL = (3, 6)  # (x, y) of the agent in the 7x7 egocentric grid; it faces y = 0
_TARGET = re.compile(r"\b(?:the|a)\s+(" + "|".join(COLOURS) + r")\s+(" + "|".join(OBJECTS) + r")\b")


def mission_target(mission: str) -> tuple[str, str]:
    """``"go to the red ball"`` -> ``("red", "ball")``; the first colour + object phrase of the mission."""
    match = _TARGET.search(mission)
    if match is None:
        raise ValueError(f"no '<colour> <object>' phrase in mission {mission!r}")
    return match.group(1), match.group(2)


def where_is(grid: np.ndarray, colour: str, kind: str) -> str:
    """Where the nearest ``colour kind`` is in an egocentric (7, 7, 3) grid, as the agent would walk there."""
    grid = np.asarray(grid)
    if grid.shape != (7, 7, 3):
        raise ValueError(f"expected minigrid's (7, 7, 3) egocentric grid, got {grid.shape}")
    xs, ys = np.nonzero((grid[..., 0] == OBJECTS[kind]) & (grid[..., 1] == COLOURS[colour]))
    if len(xs) == 0:
        return "not in view"
    ax, ay = AGENT_CELL
    ahead, side = ay - ys, xs - ax
    best = int(np.argmin(np.abs(ahead) + np.abs(side)))
    a, s = int(ahead[best]), int(side[best])
    parts = ([f"{a} ahead"] if a else []) + ([f"{abs(s)} {'right' if s > 0 else 'left'}"] if s else [])
    return " ".join(parts) or "here"


@DATASETS.register("babyai_where")
class BabyAIWhereDataset(Dataset):
    def __init__(self, *, data_dir: str, split: Literal["train", "val", "all"] = "all", val_episodes: int = 0,
                 max_episodes: int | None = None, stride: int = 1,
                 question: str = "where is the {colour} {kind}?") -> None:
        records = split_records(read_index(data_dir), split, val_episodes)
        if max_episodes is not None:
            records = records[:max_episodes]
        self.question = question
        self.items: list[tuple[np.ndarray, str, str]] = []  # (frame, question, answer)
        for record in records:
            episode = read_episode(data_dir, record)
            if episode.grids is None:
                raise ValueError(f"{data_dir}/{record.file} has no symbolic grids; collect the demonstrations again "
                                 f"with `omniplug demos collect --env babyai-... --option view=agent`")
            colour, kind = mission_target(record.instruction)
            text = question.format(colour=colour, kind=kind)
            for t in range(0, len(episode.frames), stride):
                self.items.append((episode.frames[t], text, where_is(episode.grids[t], colour, kind)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Sample:
        frame, question, answer = self.items[i]
        return Sample(turns=[Turn(role="user", text=question, images=1), Turn(role="assistant", text=answer)],
                      images=[Image.fromarray(frame)], meta={"id": f"where/{i}", "dataset": "babyai_where"})

"""Dataset ``demos``: expert demonstrations (``omniplug demos collect``) as action samples.

Every step of every (successful, by default) episode is one sample: the frame the agent saw and
its instruction in the user turn, the answer ``<act>``, and the target an
:class:`~omniplug.actions.ActionTarget` with the action taken and the ones after it (up to
``max_future``; action decoders cut their chunk from it). The dataset does not depend on the
adapter: the same demonstrations train words, new tokens, bins, residual VQ or regression.

Episodes are split by position in the index: ``val_episodes`` at the end are ``split: val``.
``data_dir`` may list several folders (the expert's demos, then DAgger rounds: ``omniplug demos collect -c``),
each split the same way; their action spaces must agree. DAgger folders need ``success_only: false``: their
episodes end in the policy's crashes, and the expert's labels on the way there are what they teach.

``history: k`` shows the policy its last ``k`` frames (oldest first, the first frame repeated
before the episode start) as ``k`` images of the user turn: velocity for continuous control,
memory for partial views. Evaluation reads ``history`` from the same dataset entry, so the
policy is rolled out with the observations it was trained on.

``reasoning`` puts a thought before ``<act>``: ``where`` (BabyAI: where the mission's object is, from the
stored grids), ``narrate`` (the expert's own reason for the action, stored with the episode when its
environment narrates: driving's "the car ahead is slower and the left lane is free: change lane left").
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from omniplug.actions.episodes import read_episode, read_index, read_meta, split_records
from omniplug.actions.space import DEFAULT_PROMPT, ActionSpace, ActionTarget
from omniplug.data.babyai_where import mission_target, where_is
from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS


@DATASETS.register("demos")
class DemoDataset(Dataset):
    def __init__(self, *, data_dir: str | list[str], split: Literal["train", "val", "all"] = "all", val_episodes: int = 0,
                 max_episodes: int | None = None, success_only: bool = True, prompt: str = DEFAULT_PROMPT,
                 trigger: str = "<act>", task: str = "act", max_future: int = 16, stride: int = 1,
                 image_size: int | None = None, history: int = 1,
                 reasoning: Literal["none", "where", "narrate"] = "none") -> None:
        folders = [str(data_dir)] if isinstance(data_dir, str) else [str(d) for d in data_dir]
        if not folders:
            raise ValueError("data_dir lists no demonstrations folder")
        metas = [read_meta(d) for d in folders]
        meta = metas[0]
        self.space = ActionSpace.from_json(meta["action_space"])
        for d, m in zip(folders[1:], metas[1:]):
            if ActionSpace.from_json(m["action_space"]) != self.space:
                raise ValueError(f"the demonstrations in {d} act in another action space than {folders[0]}'s "
                                 f"({m['action_space']} vs {meta['action_space']})")
        records = [(d, r) for d in folders for r in split_records(read_index(d), split, val_episodes)]
        if success_only:
            records = [(d, r) for d, r in records if r.success]
        if max_episodes is not None:
            records = records[:max_episodes]
        if history < 1:
            raise ValueError(f"history must be >= 1 (frames per observation), got {history}")
        if "{instruction}" not in prompt:
            raise ValueError(f"prompt {prompt!r} must contain '{{instruction}}'")
        self.data_dir, self.prompt, self.trigger, self.task = folders[0], prompt, trigger, task
        self.max_future, self.image_size, self.history = max_future, image_size, history
        self.env = meta.get("env", "")
        if reasoning not in ("none", "where", "narrate"):
            raise ValueError(f"reasoning must be 'none', 'where' or 'narrate', got {reasoning!r}")
        self.reasoning = reasoning
        self.episodes = [read_episode(d, r) for d, r in records]
        if reasoning == "where":
            for (d, r), ep in zip(records, self.episodes):
                if ep.grids is None:
                    raise ValueError(f"reasoning: where needs the symbolic grids in {d}/{r.file}; collect the "
                                     f"demonstrations with `omniplug demos collect --env babyai-... --option view=agent`")
                mission_target(ep.instruction)  # fails now, naming the mission, rather than mid-training
        if reasoning == "narrate":
            for (d, r), ep in zip(records, self.episodes):
                if ep.narrations is None:
                    raise ValueError(f"reasoning: narrate needs the expert's narrations in {d}/{r.file}; collect "
                                     f"the demonstrations in an environment whose expert narrates (e.g. highway)")
        self.index = [(e, t) for e, ep in enumerate(self.episodes) for t in range(0, ep.length, stride)]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Sample:
        e, t = self.index[i]
        ep = self.episodes[e]
        images = [self._image(ep.frames[max(t - j, 0)]) for j in range(self.history - 1, -1, -1)]
        target = ActionTarget(future=np.asarray(ep.actions[t: t + self.max_future]),
                              meta={"episode": e, "step": t, "seed": ep.seed})
        return Sample(turns=[Turn(role="user", text=self.prompt.format(instruction=ep.instruction), images=self.history),
                             Turn(role="assistant", text=self._thought(ep, t) + self.trigger)],
                      images=images, targets={self.task: [target]},
                      meta={"id": f"{self.env}/{ep.seed}/{t}", "dataset": "demos"})

    def _thought(self, ep, t: int) -> str:
        if self.reasoning == "none":
            return ""
        if self.reasoning == "narrate":
            return str(ep.narrations[t]) + " "
        return where_is(ep.grids[t], *mission_target(ep.instruction)) + " "

    def _image(self, frame: np.ndarray) -> Image.Image:
        image = Image.fromarray(frame)
        if self.image_size is not None and image.size != (self.image_size, self.image_size):
            image = image.resize((self.image_size, self.image_size), Image.BILINEAR)
        return image

"""BabyAI levels (minigrid): RGB observation + mission string, expert = minigrid's ``BabyAIBot``.

Registered names: ``babyai-gotolocal``, ``babyai-pickuploc``, ``babyai-putnextlocal`` (and
``babyai-goto``, ``babyai-gotoobj``). Actions are minigrid's seven, named as words:
left, right, forward, pick up, drop, toggle, done.

``view: full`` (default) renders the whole room from above (``tile_size`` px per cell: 64x64 for
an 8x8 room at 8 px), which makes a single frame enough to act on; ``view: agent`` renders the
agent's 7x7 egocentric view (56x56 at 8 px) and, as ``Observation.grid``, minigrid's symbolic
encoding of the same view ((7, 7, 3): object, colour, state; ``grid[x, y]``, the agent at
``(3, 6)`` facing ``y = 0``). A success is BabyAI's own: a positive reward.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

import numpy as np

from omniplug.actions.space import ActionSpace
from omniplug.envs.base import ENVS, Environment, Observation, Step, missing_simulator

ACTION_NAMES = ("left", "right", "forward", "pick up", "drop", "toggle", "done")


class BabyAIEnv(Environment):
    level: ClassVar[str] = "GoToLocal"

    def __init__(self, *, view: Literal["full", "agent"] = "full", tile_size: int = 8, max_steps: int | None = None) -> None:
        try:
            import gymnasium as gym
            import minigrid  # noqa: F401  (registers the BabyAI levels)
            from minigrid.utils.baby_ai_bot import BabyAIBot
        except ImportError as exc:
            raise missing_simulator("minigrid", exc) from None
        options: dict[str, Any] = {} if max_steps is None else {"max_steps": max_steps}
        self._env = gym.make(f"BabyAI-{self.level}-v0", **options)
        self._bot_cls = BabyAIBot
        self._bot = None
        self._expert: int | None = None
        self.view, self.tile_size = view, tile_size
        self.action_space = ActionSpace(kind="discrete", names=ACTION_NAMES, dim=1)
        self._mission = ""

    @property
    def max_steps(self) -> int:  # BabyAI sets it per episode, at reset
        return int(self._env.unwrapped.max_steps)

    def _observe(self) -> Observation:
        env = self._env.unwrapped
        frame = env.get_frame(highlight=False, tile_size=self.tile_size, agent_pov=self.view == "agent")
        grid = np.asarray(env.gen_obs()["image"], dtype=np.uint8) if self.view == "agent" else None
        return Observation(image=np.ascontiguousarray(frame, dtype=np.uint8), instruction=self._mission, grid=grid)

    def reset(self, seed: int) -> Observation:
        obs, _ = self._env.reset(seed=int(seed))
        self._mission = str(obs["mission"])
        self._bot = self._bot_cls(self._env.unwrapped)
        self._expert = None
        return self._observe()

    def expert_action(self) -> int:
        if self._expert is None:
            self._expert = int(self._bot.replan())
        return self._expert

    def step(self, action: Any) -> Step:
        a = int(np.asarray(action).reshape(-1)[0])
        if not 0 <= a < len(ACTION_NAMES):
            raise ValueError(f"BabyAI action {a} outside [0, {len(ACTION_NAMES)})")
        if self._expert is not None and a != self._expert:
            self._bot = None  # the bot's plan assumed its own action: replan from scratch next time
        _, reward, terminated, truncated, _ = self._env.step(a)
        self._expert = None
        if self._bot is None:
            self._bot = self._bot_cls(self._env.unwrapped)
        done = bool(terminated or truncated)
        return Step(observation=self._observe(), reward=float(reward), done=done, success=bool(terminated and reward > 0))

    def close(self) -> None:
        self._env.close()


def _register(level: str) -> None:
    name = "babyai-" + re.sub(r"[^a-z0-9]+", "", level.lower())
    ENVS.register(name)(type(f"BabyAI{level}", (BabyAIEnv,), {"level": level, "__module__": __name__,
                                                              "__doc__": f"BabyAI-{level}-v0 with the BabyAI bot as expert."}))


for _level in ("GoToLocal", "PickupLoc", "PutNextLocal", "GoTo", "GoToObj"):
    _register(_level)

"""The environment contract omniplug's demonstrations and closed-loop evaluation use.

An environment is headless, renders RGB frames, has an instruction per episode and an expert
(scripted or shipped with the simulator) that demonstrations come from::

    env = make_env("babyai-gotolocal")
    obs = env.reset(seed=3)                       # Observation(image HxWx3 uint8, instruction)
    step = env.step(env.expert_action())          # Step(observation, reward, done, success)

Simulators are optional dependencies (``pip install 'omniplug[sim]'``): they are imported when an
environment is built, never when this package is imported.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from omniplug.actions.space import ActionSpace
from omniplug.registry import Registry

ENVS: Registry = Registry("environment")


@dataclass
class Observation:
    image: np.ndarray  # (H, W, 3) uint8
    instruction: str
    # earlier frames of the episode, oldest first (the rollout fills in as many as the policy's `history` asks)
    history: tuple[np.ndarray, ...] = ()
    # the environment's symbolic view of the same frame, when it has one (BabyAI's agent view: minigrid's
    # (7, 7, 3) object/colour/state encoding); stored with demonstrations for auxiliary grounding data
    grid: np.ndarray | None = None
    # the environment's low-dimensional state that the frame shows, when it has one (Reacher: cos/sin of both
    # joint angles, target x, y); stored with demonstrations to train the `state` encoder's reader
    state: np.ndarray | None = None


@dataclass
class Step:
    observation: Observation
    reward: float
    done: bool  # the episode ended (task solved, failed or out of time)
    success: bool  # the task was solved (meaningful once done)


class Environment(ABC):
    """One simulator instance. Constructors are keyword-only (their signature is the option schema)."""

    action_space: ActionSpace
    max_steps: int

    @abstractmethod
    def reset(self, seed: int) -> Observation: ...

    @abstractmethod
    def step(self, action: Any) -> Step:
        """``action``: an int (discrete) or a (D,) float array in environment units."""

    @abstractmethod
    def expert_action(self) -> Any:
        """What the expert does in the current state."""

    def expert_narration(self) -> str | None:
        """Why the expert chose its last action (``expert_action``), in words, when the environment can say it
        (driving: "the car ahead is close: slow down"); stored with demonstrations for ``reasoning: narrate``."""
        return None

    def show(self, image: np.ndarray) -> np.ndarray:
        """The frame as a person watches it in rollout GIFs (the observation itself unless an environment marks
        what the policy's frame leaves implicit, e.g. which car is the ego car); never what the policy sees."""
        return image

    def episode_metrics(self) -> dict[str, float]:
        """Measures of the episode just ended beyond success and return (e.g. driving: crashed, mean speed,
        distance); ``omniplug eval --env`` reports their means. Default: none."""
        return {}

    def close(self) -> None:
        """Release simulator resources."""


def make_env(name: str, **options: Any) -> Environment:
    """Build a registered environment; an unknown name lists the available ones."""
    from omniplug import envs  # noqa: F401  (registers the built-in environments)
    from omniplug.registry import RegistryError
    from omniplug.config.schema import check_kwargs

    try:
        cls = ENVS.get(name)
    except RegistryError as exc:
        raise ValueError(str(exc)) from None
    check_kwargs(cls, options, where=f"environment {name!r}")
    return cls(**options)


def env_for(config, name: str | None = None, options: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """The environment to roll ``config``'s agent out in, and its options: ``name`` (a command line's ``--env``;
    None or "": the config's ``env.name``), the config's ``env.options`` with ``options`` (the command line's) on
    top. A name other than the config's is refused: the agent learnt from that environment's demonstrations."""
    recorded = config.env
    if name and "=" in name:  # `--env one_model.weights=RUN`: argparse gave --env the override that followed it
        raise ValueError(f"--env got {name!r}, which looks like a config override: write overrides before --env, "
                         f"or name the environment after it (--env {recorded.name or 'highway'})")
    if not name:
        if recorded.name is None:
            raise ValueError(f"{config.source} records no environment (an `env: {{name: ..., options: ...}}` "
                             f"section): name one, e.g. --env highway")
        name = recorded.name
    elif recorded.name is not None and name != recorded.name:
        raise ValueError(f"{config.source} is an agent for {recorded.name!r} (its env.name), not {name!r}: leave the "
                         f"name out (--env alone) or, to try it there anyway, override env.name={name}")
    return name, {**recorded.options, **(options or {})}


def missing_simulator(package: str, exc: ImportError) -> ImportError:
    return ImportError(f"this environment needs {package!r} ({exc}); install the simulators with "
                       f"pip install 'omniplug[sim]'")


def parse_options(items: list[str] | None) -> dict[str, Any]:
    """Command-line ``key=value`` environment options; values parsed as JSON when they can be."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"environment option {item!r} must look like key=value (e.g. view=agent)")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out

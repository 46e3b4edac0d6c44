"""Expert demonstrations: run an environment's expert for N seeded episodes and write them in the
on-disk format of :mod:`omniplug.actions.episodes`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from omniplug.actions.episodes import Episode, EpisodeWriter
from omniplug.envs.base import make_env


@dataclass
class CollectReport:
    out: Path
    episodes: int
    steps: int
    success_rate: float
    seconds: float


def collect_demos(env_name: str, *, episodes: int, out: str | Path, seed: int = 0,
                  env_options: dict[str, Any] | None = None,
                  progress: Callable[[int, int], None] | None = None) -> CollectReport:
    """Episodes use seeds ``seed, seed + 1, ...``; keep evaluation seeds outside that range."""
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    env = make_env(env_name, **(env_options or {}))
    writer = EpisodeWriter(out, env=env_name, action_space=env.action_space)
    start = time.perf_counter()
    successes = steps = 0
    try:
        for i in range(episodes):
            ep = run_expert_episode(env, seed=seed + i)
            writer.add(ep)
            successes += ep.success
            steps += ep.length
            if progress is not None:
                progress(i + 1, episodes)
    finally:
        writer.close()
        env.close()
    return CollectReport(out=Path(out), episodes=episodes, steps=steps, success_rate=successes / episodes,
                         seconds=time.perf_counter() - start)


def run_expert_episode(env, *, seed: int) -> Episode:
    obs = env.reset(seed)
    frames, actions, rewards, grids, states = [obs.image], [], [], [obs.grid], [obs.state]
    notes: list[str | None] = []
    success = False
    for _ in range(env.max_steps):
        action = env.expert_action()
        notes.append(env.expert_narration())
        step = env.step(action)
        frames.append(step.observation.image)
        grids.append(step.observation.grid)
        states.append(step.observation.state)
        actions.append(action)
        rewards.append(step.reward)
        if step.done:
            success = step.success
            break
    return Episode(frames=np.stack(frames), actions=np.asarray(actions), rewards=np.asarray(rewards, dtype=np.float32),
                   instruction=obs.instruction, seed=seed, success=success,
                   grids=np.stack(grids) if all(g is not None for g in grids) else None,
                   states=np.stack(states).astype(np.float32) if all(s is not None for s in states) else None,
                   narrations=np.asarray(notes, dtype=str) if notes and all(n is not None for n in notes) else None)

"""Expert demonstrations: run an environment's expert for N seeded episodes and write them in the
on-disk format of :mod:`omniplug.actions.episodes`.

With a ``policy`` (DAgger, Ross et al. 2011) the policy drives and the expert labels: every step stores the
frame the policy's own driving led to and the action the expert would take there, so that the next round of
training sees the states its mistakes reach (imitation's covariate shift). ``expert_share`` lets the expert
drive that share of the steps instead (DAgger's beta)."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from omniplug.actions.episodes import Episode, EpisodeWriter
from omniplug.envs.base import Observation, make_env


@dataclass
class CollectReport:
    out: Path
    episodes: int
    steps: int
    success_rate: float
    seconds: float
    expert_agreement: float | None = None  # with a policy on discrete actions: share of steps it chose the expert's


def collect_demos(env_name: str, *, episodes: int, out: str | Path, seed: int = 0,
                  env_options: dict[str, Any] | None = None, policy=None, expert_share: float = 0.0,
                  progress: Callable[[int, int], None] | None = None) -> CollectReport:
    """Episodes use seeds ``seed, seed + 1, ...``; keep evaluation seeds outside that range. ``policy`` (e.g. a
    ``ModelPolicy``): it drives, the expert labels (module docstring)."""
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if not 0.0 <= expert_share <= 1.0:
        raise ValueError(f"expert_share must be in [0, 1], got {expert_share}")
    env = make_env(env_name, **(env_options or {}))
    space = getattr(getattr(policy, "decoder", None), "space", None)  # a ModelPolicy's action space
    if space is not None and space != env.action_space:
        env.close()
        raise ValueError(f"the policy acts in {space} but {env_name!r} in {env.action_space}: give the config of a "
                         f"model trained on this environment's demonstrations")
    writer = EpisodeWriter(out, env=env_name, action_space=env.action_space, options=env_options)
    start = time.perf_counter()
    successes = steps = agreed = 0
    rng = np.random.default_rng(seed)
    try:
        for i in range(episodes):
            if policy is None:
                ep = run_expert_episode(env, seed=seed + i)
            else:
                ep, same = run_labelled_episode(env, policy, seed=seed + i, expert_share=expert_share, rng=rng)
                agreed += same
            writer.add(ep)
            successes += ep.success
            steps += ep.length
            if progress is not None:
                progress(i + 1, episodes)
    finally:
        writer.close()
        env.close()
    return CollectReport(out=Path(out), episodes=episodes, steps=steps, success_rate=successes / episodes,
                         seconds=time.perf_counter() - start,
                         expert_agreement=agreed / max(steps, 1)
                         if policy is not None and env.action_space.is_discrete else None)


def run_expert_episode(env, *, seed: int) -> Episode:
    return run_labelled_episode(env, None, seed=seed)[0]


def run_labelled_episode(env, policy, *, seed: int, expert_share: float = 0.0,
                         rng: np.random.Generator | None = None) -> tuple[Episode, int]:
    """One episode whose every step is labelled with the expert's action (and narration). ``policy`` None: the
    expert drives; else the policy drives, except for a random ``expert_share`` of the steps. Returns the episode
    and on how many steps the policy's choice was the expert's."""
    keep = max(int(getattr(policy, "history", 1)) - 1, 0)  # earlier frames the policy looks at
    earlier: deque[np.ndarray] = deque(maxlen=keep)
    agreed = 0
    obs = env.reset(seed)
    instruction, discrete = obs.instruction, env.action_space.is_discrete
    frames, actions, rewards, grids, states = [obs.image], [], [], [obs.grid], [obs.state]
    notes: list[str | None] = []
    success = False
    for _ in range(env.max_steps):
        action = env.expert_action()
        notes.append(env.expert_narration())
        drive = action
        if policy is not None:
            seen = Observation(image=obs.image, instruction=obs.instruction, history=tuple(earlier))
            chosen = policy.act([seen])[0]
            if chosen is not None:  # the first action of the chunk, in the environment's units
                chosen = int(np.asarray(chosen).reshape(-1)[0]) if discrete else np.asarray(chosen, np.float32).reshape(
                    -1, env.action_space.dim)[0]
                agreed += bool(discrete and chosen == int(action))
            if chosen is not None and not (rng is not None and rng.random() < expert_share):
                drive = chosen
            earlier.append(obs.image)
        step = env.step(drive)
        obs = step.observation
        frames.append(step.observation.image)
        grids.append(step.observation.grid)
        states.append(step.observation.state)
        actions.append(action)
        rewards.append(step.reward)
        if step.done:
            success = step.success
            break
    episode = Episode(frames=np.stack(frames), actions=np.asarray(actions), rewards=np.asarray(rewards, dtype=np.float32),
                      instruction=instruction, seed=seed, success=success,
                      grids=np.stack(grids) if all(g is not None for g in grids) else None,
                      states=np.stack(states).astype(np.float32) if all(s is not None for s in states) else None,
                      narrations=np.asarray(notes, dtype=str) if notes and all(n is not None for n in notes) else None)
    return episode, agreed

"""Closed-loop evaluation: roll a policy out for N seeded episodes on a vector of environments.

``num_envs`` environments step side by side; at every step the environments whose queue of
actions is empty are observed together and the policy is called **once** for all of them (one
batched model call). A policy returns, per observation, a chunk of actions (``(k,)`` ids or
``(k, D)`` floats); the first ``execute`` of them (all by default) are played before the policy is
asked again. Episodes use seeds ``seed, seed + 1, ...``: keep them apart from the demonstrations'.

The report gives success rate, mean return and mean episode length; ``gif`` writes the first few
episodes side by side (a green frame marks a success, red a failure).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from omniplug.actions.space import DEFAULT_PROMPT
from omniplug.data.collate import Collator
from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.envs.base import Environment, Observation, make_env


class Policy(Protocol):
    def act(self, observations: list[Observation]) -> list[np.ndarray]:
        """Per observation, the next actions: (k,) discrete ids or (k, D) continuous values."""


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    total_return: float
    length: int
    metrics: dict[str, float] = field(default_factory=dict)  # Environment.episode_metrics()


@dataclass
class RolloutReport:
    env: str
    episodes: list[EpisodeResult]
    seconds: float
    policy_calls: int
    gif: str | None = None
    invalid_actions: int = 0  # policy outputs that were not actions (replaced by a no-op choice)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def success_rate(self) -> float:
        return float(np.mean([e.success for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_return(self) -> float:
        return float(np.mean([e.total_return for e in self.episodes])) if self.episodes else 0.0

    @property
    def mean_length(self) -> float:
        return float(np.mean([e.length for e in self.episodes])) if self.episodes else 0.0

    def metric_means(self) -> dict[str, float]:
        """The mean of every episode measure over the episodes that report it (e.g. ``success_overtake`` over the
        overtaking episodes only)."""
        names = sorted({k for e in self.episodes for k in e.metrics})
        return {k: float(np.mean([e.metrics[k] for e in self.episodes if k in e.metrics])) for k in names}

    def summary(self) -> dict[str, Any]:
        return {"env": self.env, "episodes": len(self.episodes), "success_rate": self.success_rate,
                "mean_return": self.mean_return, "mean_length": self.mean_length, "seconds": round(self.seconds, 2),
                "policy_calls": self.policy_calls, "invalid_actions": self.invalid_actions, "gif": self.gif,
                **self.metric_means(), **self.extra}

    def to_json(self) -> dict[str, Any]:
        return {**self.summary(), "per_episode": [asdict(e) for e in self.episodes]}


class ConstantPolicy:
    """The same action at every step, whatever it sees: the observation-blind baseline of closed-loop figures
    (driving: ``idle`` keeps the lane and the speed). ``action``: an action name or index (discrete), or D floats."""

    def __init__(self, action: str | int | list[float], space) -> None:
        if space.is_discrete:
            if isinstance(action, str) and not action.lstrip("-").isdigit():
                if action not in space.names:
                    raise ValueError(f"constant action {action!r} is not one of {list(space.names)}")
                action = space.names.index(action)
            action = int(action)
            if not 0 <= action < len(space.names):
                raise ValueError(f"constant action {action} is not one of 0..{len(space.names) - 1}")
            self.action = np.asarray([action])
        else:
            values = [float(v) for v in (action.split(",") if isinstance(action, str) else action)]
            if len(values) != space.dim:
                raise ValueError(f"a constant continuous action needs {space.dim} values, got {len(values)}")
            self.action = np.asarray([values], dtype=np.float32)

    def act(self, observations: list[Observation]) -> list[np.ndarray]:
        return [self.action.copy() for _ in observations]


class ModelPolicy:
    """A ``OneModel`` with an action decoder as a policy: one ``generate`` call per batch of
    observations, the answer forced to start with the decoder's trigger (``<act>``). With
    ``reasoning`` the model writes up to ``reasoning_tokens`` of its own first (a chain of thought,
    e.g. where the mission's object is) and acts at the ``<act>`` it generates; an answer without
    one is no action (counted as invalid by ``evaluate``)."""

    def __init__(self, model, *, task: str = "act", prompt: str = DEFAULT_PROMPT, max_length: int = 512,
                 history: int = 1, reasoning: bool = False, reasoning_tokens: int = 24) -> None:
        if task not in model.decoders:
            raise ValueError(f"the model has no decoder for task {task!r}; it has {sorted(model.decoders)}")
        if history < 1:
            raise ValueError(f"history must be >= 1 (frames per observation), got {history}")
        self.model, self.task, self.prompt, self.history = model, task, prompt, history
        self.reasoning, self.reasoning_tokens = reasoning, reasoning_tokens
        self.last_texts: list[str] = []
        self.decoder = model.decoders[task]
        self.collator = Collator(model, max_length=max_length, for_generation=True)

    @torch.no_grad()
    def act(self, observations: list[Observation]) -> list[np.ndarray | None]:
        samples = [Sample(turns=[Turn(role="user", text=self.prompt.format(instruction=o.instruction),
                                      images=self.history)],
                          images=[Image.fromarray(f) for f in self.frames(o)]) for o in observations]
        device = next(self.model.parameters()).device
        batch = self.collator(samples).to(device)
        was_training = self.model.training
        self.model.eval()
        try:
            trigger = "".join(self.decoder.tokens)
            gen = self.model.generate(
                batch, max_new_tokens=self.decoder.answer_length + 1 + (self.reasoning_tokens if self.reasoning else 0),
                answer_prefix=None if self.reasoning else trigger, max_task_tokens=1)
        finally:
            self.model.train(was_training)
        self.last_texts = gen.texts
        return [items[0] if items else None for items in gen.decoder_outputs.get(self.task, [[]] * len(samples))]

    def frames(self, o: Observation) -> list[np.ndarray]:
        """The last ``history`` frames, oldest first; the oldest known one repeats before the episode start
        (as the demos reader does)."""
        earlier = list(o.history[-(self.history - 1):]) if self.history > 1 else []
        earlier = [(earlier or [o.image])[0]] * (self.history - 1 - len(earlier)) + earlier
        return [*earlier, o.image]


class EnsemblePolicy:
    """Several policies (e.g. the same recipe trained with different seeds) vote at every decision: discrete
    actions by majority (a tie goes to the earliest-listed policy among the tied actions), continuous ones by
    their mean. Only each answer's first action counts (an ensemble decides one step at a time); a policy that
    gives no valid action abstains."""

    def __init__(self, policies: list[Policy]) -> None:
        if len(policies) < 2:
            raise ValueError(f"an ensemble needs at least 2 policies, got {len(policies)}")
        self.policies = list(policies)
        self.history = max(int(getattr(p, "history", 1)) for p in self.policies)

    def act(self, observations: list[Observation]) -> list[np.ndarray | None]:
        answers = [p.act(observations) for p in self.policies]
        return [self.vote([a[i] for a in answers]) for i in range(len(observations))]

    @staticmethod
    def vote(answers: list[np.ndarray | None]) -> np.ndarray | None:
        firsts = [np.asarray(a)[:1] for a in answers if a is not None and len(a)]
        if not firsts:
            return None
        if firsts[0].dtype.kind == "f":
            return np.mean(firsts, axis=0)
        ids = [int(f.reshape(-1)[0]) for f in firsts]
        counts = {i: ids.count(i) for i in ids}
        best = max(counts.values())
        return np.asarray([next(i for i in ids if counts[i] == best)])


def evaluate(policy: Policy | str, env_name: str, *, episodes: int, seed: int = 100_000, num_envs: int = 8,
             execute: int | None = None, env_options: dict[str, Any] | None = None, gif: str | Path | None = None,
             gif_episodes: int = 4, gif_scale: int = 3, seeds: list[int] | None = None) -> RolloutReport:
    """Roll ``policy`` out (``"expert"`` plays each environment's own expert) and report. ``seeds`` (e.g. from
    ``mission_seeds``) replaces ``seed, seed + 1, ...`` and ``episodes``."""
    if seeds is not None:
        seeds, episodes = list(seeds), len(seeds)
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    seeds = seeds if seeds is not None else list(range(seed, seed + episodes))
    envs: list[Environment] = [make_env(env_name, **(env_options or {})) for _ in range(min(num_envs, episodes))]
    pending = deque(seeds)
    slots: list[dict[str, Any] | None] = [None] * len(envs)
    obs: list[Observation | None] = [None] * len(envs)
    results: list[EpisodeResult] = []
    frames: dict[int, list[np.ndarray]] = {}
    gif_seeds = set(seeds[:gif_episodes]) if gif else set()
    calls = invalid = 0
    keep = max(int(getattr(policy, "history", 1)) - 1, 0)  # earlier frames the policy looks at
    start = time.perf_counter()

    def start_episode(i: int) -> None:
        if not pending:
            slots[i] = None
            return
        s = pending.popleft()
        obs[i] = envs[i].reset(s)
        slots[i] = {"seed": s, "ret": 0.0, "len": 0, "queue": deque(), "earlier": deque(maxlen=keep)}
        if s in gif_seeds:
            frames[s] = [envs[i].show(obs[i].image)]

    try:
        for i in range(len(envs)):
            start_episode(i)
        while any(slot is not None for slot in slots):
            need = [i for i, slot in enumerate(slots) if slot is not None and not slot["queue"]]
            if need:
                if policy == "expert":
                    chunks = [np.asarray([envs[i].expert_action()]) for i in need]
                else:
                    chunks = policy.act([obs[i] for i in need])
                    calls += 1
                for i, chunk in zip(need, chunks):
                    if chunk is None:
                        invalid += 1
                        chunk = _noop(envs[i])
                    chunk = np.asarray(chunk)
                    if chunk.ndim == (0 if envs[i].action_space.is_discrete else 1):
                        chunk = chunk[None]
                    slots[i]["queue"].extend(list(chunk[: execute or len(chunk)]))
            for i, slot in enumerate(slots):
                if slot is None:
                    continue
                if keep:
                    slot["earlier"].append(obs[i].image)
                step = envs[i].step(slot["queue"].popleft())
                obs[i] = step.observation
                if keep:
                    obs[i] = Observation(image=obs[i].image, instruction=obs[i].instruction,
                                         history=tuple(slot["earlier"]))
                slot["ret"] += step.reward
                slot["len"] += 1
                if slot["seed"] in frames:
                    frames[slot["seed"]].append(envs[i].show(step.observation.image))
                if step.done or slot["len"] >= envs[i].max_steps:
                    results.append(EpisodeResult(seed=slot["seed"], success=bool(step.success), total_return=slot["ret"],
                                                 length=slot["len"], metrics=envs[i].episode_metrics()))
                    if slot["seed"] in frames:
                        frames[slot["seed"]].append(_border(envs[i].show(step.observation.image), step.success))
                    start_episode(i)
    finally:
        for env in envs:
            env.close()
    results.sort(key=lambda r: r.seed)
    gif_path = write_gif([frames[s] for s in sorted(frames)], gif, scale=gif_scale) if gif and frames else None
    return RolloutReport(env=env_name, episodes=results, seconds=time.perf_counter() - start, policy_calls=calls,
                         gif=str(gif_path) if gif_path else None, invalid_actions=invalid)


def mission_seeds(env_name: str, mission: str, *, count: int = 1, seed: int = 100_000, tries: int = 5_000,
                  env_options: dict[str, Any] | None = None) -> list[int]:
    """The first ``count`` seeds from ``seed`` on whose episode has the mission ``mission`` (compared without case
    and surrounding blanks/full stop): how a mission a user types becomes episodes to roll out. Tries ``tries``
    seeds (200 when every one has the same other mission), then says which missions it met instead."""
    def norm(text: str) -> str:
        return " ".join(text.lower().strip().rstrip(".").split())

    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    want, found, met = norm(mission), [], {}
    env = make_env(env_name, **(env_options or {}))
    try:
        for s in range(seed, seed + tries):
            text = env.reset(s).instruction
            if norm(text) == want:
                found.append(s)
                if len(found) == count:
                    return found
            else:
                met[norm(text)] = met.get(norm(text), 0) + 1
                if not found and len(met) == 1 and s - seed + 1 >= 200:
                    break  # every episode so far has one other mission: an option fixes it (e.g. mission=cruise)
    finally:
        env.close()
    if found:
        return found
    examples = ", ".join(repr(m) for m, _ in sorted(met.items(), key=lambda kv: -kv[1])[:8])
    raise ValueError(f"no episode of {env_name!r} among seeds {seed}..{s} has the mission {mission!r}; "
                     f"missions it has: {examples}")


def _noop(env: Environment) -> np.ndarray:
    space = env.action_space
    if space.is_discrete:
        return np.asarray([space.names.index("done") if "done" in space.names else 0])
    return np.zeros((1, space.dim), dtype=np.float32)


def _border(image: np.ndarray, success: bool, width: int = 2) -> np.ndarray:
    out = image.copy()
    color = np.array([40, 200, 40] if success else [220, 40, 40], dtype=np.uint8)
    out[:width], out[-width:], out[:, :width], out[:, -width:] = color, color, color, color
    return out


def write_gif(episodes: list[list[np.ndarray]], path: str | Path, *, scale: int = 3, ms_per_frame: int = 120) -> Path:
    """Episodes side by side (frames at least twice as wide as high, a road ahead: one above the other; shorter ones
    hold their last frame), scaled up ``scale`` times."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    length = max(len(f) for f in episodes) + 4  # hold the final frames a moment
    h = max(f[0].shape[0] for f in episodes)
    w = max(f[0].shape[1] for f in episodes)
    stacked = w >= 2 * h
    tiles = []
    for t in range(length):
        row = [ep[min(t, len(ep) - 1)] for ep in episodes]
        if stacked:
            row = [np.pad(im, ((0, 2), (0, w - im.shape[1]), (0, 0)), constant_values=255) for im in row]
        else:
            row = [np.pad(im, ((0, h - im.shape[0]), (0, 2), (0, 0)), constant_values=255) for im in row]
        tiles.append(Image.fromarray(np.concatenate(row, axis=0 if stacked else 1)))
    if scale > 1:
        tiles = [im.resize((im.width * scale, im.height * scale), Image.NEAREST) for im in tiles]
    tiles[0].save(path, save_all=True, append_images=tiles[1:], duration=ms_per_frame, loop=0)
    return path


def evaluate_config(config, overrides: list[str] | tuple[str, ...] = (), *, env: str, episodes: int,
                    out_dir: str | Path, seed: int = 100_000, num_envs: int = 8, execute: int | None = None,
                    task: str = "act", env_options: dict[str, Any] | None = None,
                    seeds: list[int] | None = None) -> RolloutReport:
    """Build the model of ``config`` (its ``one_model.weights`` loaded), roll it out on ``env`` and
    write ``rollouts.gif`` into ``out_dir``: what ``omniplug eval`` on an environment calls."""
    policy = model_policy(config, overrides, task=task)
    return evaluate(policy, env, episodes=episodes, seed=seed, num_envs=num_envs, execute=execute,
                    env_options=env_options, gif=Path(out_dir) / "rollouts.gif", seeds=seeds)


def model_policy(config, overrides: list[str] | tuple[str, ...] = (), *, task: str = "act") -> ModelPolicy:
    """The model of ``config`` (its ``one_model.weights`` loaded) as a policy observing the way its training demos
    were read (``history``, ``reasoning``)."""
    from omniplug.build import build_model
    from omniplug.config import Config, load_config

    config = config if isinstance(config, Config) else load_config(config, list(overrides))
    model = build_model(config)
    model.eval()
    return policy_for(model, config, task=task)


def policy_for(model, config, *, task: str = "act") -> ModelPolicy:
    """``model`` (built from ``config``) as a policy that observes the way the config's training demos were read."""
    return ModelPolicy(model, task=task, history=demo_history(config),
                       reasoning=demo_setting(config, "reasoning", "none") != "none")


def demo_history(config) -> int:
    """The ``history`` (frames per observation) of the config's training demos, so that a policy is rolled
    out with the observations it was trained on; 1 when no ``demos`` dataset trains."""
    return int(demo_setting(config, "history", 1))


def demo_setting(config, key: str, default: Any) -> Any:
    """A setting of the config's training ``demos`` datasets (``history``, ``reasoning``), which the rollout
    must share with training; ``default`` when no ``demos`` dataset trains or none sets it (a ratio of 0 does not
    train)."""
    values = {config.catalogues["dataset"][name].params.get(key, default)
              for name, ratio in config.data.train.items()
              if ratio and config.catalogues["dataset"][name].type == "demos"}
    if len(values) > 1:
        raise ValueError(f"the training demos disagree on {key} ({sorted(map(str, values))}); one policy is rolled "
                         f"out one way")
    return values.pop() if values else default

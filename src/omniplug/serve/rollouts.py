"""Rollouts on the server: the served agent plays a mission a user types, in the environment the server was
started with, and the episodes come back as a GIF with their figures::

    omniplug serve -c configs/driving/highway.yaml --env highway      # the UI's Rollout tab, POST /v1/rollout

A typed mission becomes episodes through :func:`~omniplug.envs.rollout.mission_seeds` (the first seeds from
``seed`` on whose episode has that mission); the model acts through its ``act`` decoder exactly as
``omniplug eval --env`` rolls it out (:class:`~omniplug.envs.rollout.ModelPolicy`, the frame history and
reasoning of its training demos). One rollout runs at a time and takes one admission place, like a chat answer.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import RequestError
from .settings import ServeSettings

#: seeds tried to find a typed mission (BabyAI's missions are many; one reset takes milliseconds)
MISSION_TRIES = 2_000


@dataclass(frozen=True)
class Rollout:
    """One answered rollout request: the episodes' report and the GIF that shows them side by side."""

    mission: str
    seeds: list[int]
    summary: dict[str, Any]  # RolloutReport.summary(): success rate, return, length, the environment's measures
    episodes: list[dict[str, Any]]  # per episode: seed, success, return, length, measures
    gif: Path


def check_env(settings: ServeSettings) -> None:
    """Build the server's environment once (before the server binds): an unknown name or option fails here,
    with the environment's own message, not on the first request."""
    if settings.env is None:
        return
    from omniplug.envs.base import make_env

    make_env(settings.env, **settings.env_options).close()


def example_missions(settings: ServeSettings, *, count: int = 6, seeds: int = 40) -> list[str]:
    """Distinct missions of the first ``seeds`` episodes (from seed 100000, the evaluation seeds), in the order
    met: what the Rollout tab offers to pick from."""
    if settings.env is None:
        return []
    from omniplug.envs.base import make_env

    env = make_env(settings.env, **settings.env_options)
    found: list[str] = []
    try:
        for s in range(100_000, 100_000 + seeds):
            text = env.reset(s).instruction
            if text not in found:
                found.append(text)
                if len(found) == count:
                    break
    finally:
        env.close()
    return found


class Rollouts:
    """Rolls the service's model out on ``settings.env``. :meth:`run` raises ``RequestError``."""

    def __init__(self, service) -> None:
        self.service = service
        self.settings: ServeSettings = service.settings
        self._lock = threading.Lock()  # one rollout at a time: it steps the simulators and calls the model
        self._policy = None

    @property
    def enabled(self) -> bool:
        return self.settings.env is not None

    def _get_policy(self):
        if self._policy is None:
            from omniplug.config import load_config
            from omniplug.envs.rollout import policy_for

            config = load_config(self.service.config, list(self.service.overrides))
            self._policy = policy_for(self.service.pipeline.model, config)
        return self._policy

    def check_request(self, mission: Any, episodes: Any, seed: Any) -> tuple[str, int, int]:
        """The request's values, checked: a non-empty mission within the prompt limit, 1 to
        ``max_rollout_episodes`` episodes, a seed from 0 to 2**31 - 1."""
        if not self.enabled:
            raise RequestError(404, "no_environment", "this server rolls out no environment: start it with --env "
                                                      "(e.g. omniplug serve -c configs/driving/highway.yaml --env "
                                                      "highway)")
        if not isinstance(mission, str) or not mission.strip():
            raise RequestError(400, "empty_mission", "give a mission, e.g. 'keep to the right lane'")
        if len(mission) > self.settings.max_prompt_chars:
            raise RequestError(400, "mission_too_long", f"the mission has {len(mission)} characters; at most "
                                                        f"{self.settings.max_prompt_chars}")
        limit = self.settings.max_rollout_episodes
        if isinstance(episodes, bool) or not isinstance(episodes, int) or not 1 <= episodes <= limit:
            raise RequestError(400, "invalid_episodes", f"episodes must be a whole number from 1 to {limit} (the "
                                                        f"server's --max-rollout-episodes), got {episodes!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
            raise RequestError(400, "invalid_seed", f"seed must be a whole number from 0 to 2**31 - 1, got {seed!r}")
        return mission.strip(), episodes, seed

    def run(self, mission: Any, episodes: Any, seed: Any, out_dir: str | Path) -> Rollout:
        """Roll out ``episodes`` episodes of ``mission`` (seeds from ``seed`` on) and write ``rollouts.gif`` into
        ``out_dir``. Raises ``RequestError``: 404 without an environment, 400 for a bad value or a mission the
        environment does not have (the message lists missions it has), 503 before the model is ready, 429 when
        the queue is full."""
        from omniplug.envs.rollout import evaluate, mission_seeds

        mission, episodes, seed = self.check_request(mission, episodes, seed)
        if self.service.readiness.state != "ready":
            state = self.service.readiness
            raise RequestError(503, "not_ready" if state.state == "loading" else "model_failed", state.message)
        with self.service.admission.slot(1), self._lock:  # the mission search steps simulators too
            try:
                seeds = mission_seeds(self.settings.env, mission, count=episodes, seed=seed, tries=MISSION_TRIES,
                                      env_options=self.settings.env_options)
            except ValueError as exc:
                raise RequestError(400, "unknown_mission", str(exc)) from None
            report = evaluate(self._get_policy(), self.settings.env, episodes=len(seeds), seeds=seeds,
                              num_envs=len(seeds), env_options=self.settings.env_options,
                              gif=Path(out_dir) / "rollouts.gif", gif_episodes=len(seeds))
        summary = {k: v for k, v in report.summary().items() if k != "gif"}  # a server path: the GIF comes as a file
        return Rollout(mission=mission, seeds=seeds, summary=summary, episodes=report.to_json()["per_episode"],
                       gif=Path(report.gif))

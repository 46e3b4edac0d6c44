"""``reacher``: gymnasium's MuJoCo Reacher-v5 seen from above, with a scripted expert.

Observation: a top-down RGB render (``image_size`` px; the red dot is the target) and the
instruction "move the fingertip to the red target"; ``Observation.state`` is what the frame shows
(cos/sin of both joints, the target's x, y), stored with demonstrations for the ``state`` encoder. Actions: two joint torques in [-1, 1].
The expert solves the two-link inverse kinematics for the target (choosing the elbow branch
closer to the current pose) and tracks those joint angles with a PD controller whose gains (kp 3, kd 0.3) keep
its torques smooth: with kp 8 / kd 0.6 it reached the target as surely but chattered between saturated
torques, which no observation predicts (an MLP on the true state of two frames stayed at the blind baseline). An episode lasts
50 steps; it succeeds when the fingertip ends within ``success_distance`` of the target (``final_distance`` is
reported per episode).

Rendering uses MuJoCo's EGL backend (``MUJOCO_GL=egl`` unless already set): headless, CPU.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from omniplug.actions.space import ActionSpace
from omniplug.envs.base import ENVS, Environment, Observation, Step, missing_simulator

LINK1, LINK2 = 0.1, 0.11  # Reacher's arm: shoulder->elbow, elbow->fingertip (metres)
INSTRUCTION = "move the fingertip to the red target"


@ENVS.register("reacher")
class ReacherEnv(Environment):
    def __init__(self, *, image_size: int = 64, success_distance: float = 0.02, kp: float = 3.0, kd: float = 0.3) -> None:
        os.environ.setdefault("MUJOCO_GL", "egl")
        try:
            import gymnasium as gym
        except ImportError as exc:
            raise missing_simulator("gymnasium[mujoco]", exc) from None
        camera = {"distance": 0.62, "elevation": -90.0, "azimuth": 90.0, "lookat": np.zeros(3)}
        try:
            self._env = gym.make("Reacher-v5", render_mode="rgb_array", width=image_size, height=image_size,
                                 default_camera_config=camera)
        except (ImportError, gym.error.DependencyNotInstalled) as exc:
            raise missing_simulator("gymnasium[mujoco]", exc) from None
        self.success_distance, self.kp, self.kd = success_distance, kp, kd
        self.action_space = ActionSpace(kind="continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0))
        self.max_steps = 50

    def _observe(self) -> Observation:
        return Observation(image=np.ascontiguousarray(self._env.render(), dtype=np.uint8), instruction=INSTRUCTION,
                           state=self.state())

    def state(self) -> np.ndarray:
        """What a frame shows: cos, sin of the shoulder and elbow angles, and the target's x, y (metres)."""
        q = self._env.unwrapped.data.qpos
        return np.array([np.cos(q[0]), np.sin(q[0]), np.cos(q[1]), np.sin(q[1]), q[2], q[3]], dtype=np.float32)

    def distance(self) -> float:
        u = self._env.unwrapped
        return float(np.linalg.norm(u.get_body_com("fingertip") - u.get_body_com("target")))

    def reset(self, seed: int) -> Observation:
        self._env.reset(seed=int(seed))
        return self._observe()

    def expert_action(self) -> np.ndarray:
        u = self._env.unwrapped
        q, qd = u.data.qpos[:2], u.data.qvel[:2]
        tx, ty = u.data.qpos[2], u.data.qpos[3]
        cos_elbow = np.clip((tx * tx + ty * ty - LINK1**2 - LINK2**2) / (2 * LINK1 * LINK2), -1.0, 1.0)
        best = None
        for sign in (1.0, -1.0):  # the two elbow branches; track the one nearer the current pose
            elbow = sign * np.arccos(cos_elbow)
            shoulder = np.arctan2(ty, tx) - np.arctan2(LINK2 * np.sin(elbow), LINK1 + LINK2 * np.cos(elbow))
            err = np.array([_wrap(shoulder - q[0]), elbow - q[1]])
            if best is None or np.abs(err).sum() < np.abs(best).sum():
                best = err
        return np.clip(self.kp * best - self.kd * qd, -1.0, 1.0).astype(np.float32)

    def episode_metrics(self) -> dict[str, float]:
        """``final_distance``: fingertip to target at the end (metres; the expert ends ~0.005, a still arm ~0.2)."""
        return {"final_distance": self.distance()}

    def step(self, action: Any) -> Step:
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(2), -1.0, 1.0)
        _, reward, terminated, truncated, _ = self._env.step(a)
        done = bool(terminated or truncated)
        return Step(observation=self._observe(), reward=float(reward), done=done,
                    success=done and self.distance() < self.success_distance)

    def close(self) -> None:
        self._env.close()


def _wrap(angle: float) -> float:
    return float((angle + np.pi) % (2 * np.pi) - np.pi)

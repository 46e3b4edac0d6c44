"""Environments (headless simulators with experts), demonstration collection and closed-loop rollouts."""

from omniplug.envs import babyai, highway, reacher  # noqa: F401  (register the built-in environments)
from omniplug.envs.base import ENVS, Environment, Observation, Step, make_env  # noqa: F401

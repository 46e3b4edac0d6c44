"""What an embodiment's actions look like, and the raw action target a dataset hands a decoder.

A dataset never knows which adapter will turn its actions into tokens or embeddings: it yields
:class:`ActionTarget` (the demonstrated action at this step and the ones after it, in the
environment's own units) and each action decoder chunks, normalises and encodes it itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

#: the user turn of an action sample: the dataset ``demos`` and ``ModelPolicy`` share it
DEFAULT_PROMPT = "{instruction}"


@dataclass(frozen=True)
class ActionSpace:
    """``discrete``: ``names[i]`` is action ``i``. ``continuous``: ``dim`` floats within ``low``/``high``."""

    kind: Literal["discrete", "continuous"]
    names: tuple[str, ...] = ()
    dim: int = 1
    low: tuple[float, ...] = ()
    high: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "discrete" and not self.names:
            raise ValueError("a discrete action space needs the names of its actions")
        if self.kind == "continuous" and (len(self.low) != self.dim or len(self.high) != self.dim):
            raise ValueError(f"a continuous action space of dim {self.dim} needs {self.dim} low and high bounds")
        if self.kind not in ("discrete", "continuous"):
            raise ValueError(f"action space kind must be 'discrete' or 'continuous', got {self.kind!r}")

    @property
    def is_discrete(self) -> bool:
        return self.kind == "discrete"

    def to_json(self) -> dict[str, Any]:
        if self.is_discrete:
            return {"kind": self.kind, "names": list(self.names)}
        return {"kind": self.kind, "dim": self.dim, "low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ActionSpace":
        if data.get("kind") == "discrete":
            return cls(kind="discrete", names=tuple(data["names"]), dim=1)
        return cls(kind="continuous", dim=int(data["dim"]), low=tuple(map(float, data["low"])),
                   high=tuple(map(float, data["high"])))


@dataclass
class ActionTarget:
    """The demonstrated actions from one step on: ``future[0]`` is the action taken at this step.

    ``future`` is ``(F,)`` int64 for discrete actions and ``(F, D)`` float32 for continuous ones.
    """

    future: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def chunk(self, k: int) -> np.ndarray:
        """The next ``k`` actions; past the episode's end the last action repeats."""
        future = np.asarray(self.future)
        if len(future) == 0:
            raise ValueError("an ActionTarget needs at least one action")
        if len(future) >= k:
            return future[:k]
        pad = np.repeat(future[-1:], k - len(future), axis=0)
        return np.concatenate([future, pad], axis=0)

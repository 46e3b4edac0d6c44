"""Projector ``mlp``: Linear -> act -> Linear ... (LLaVA-1.5's ``mlp2x_gelu``; LISA's out
projector is ``depth: 2, activation: relu``). Parameter names follow LLaVA's Sequential
(``0.weight``, ``2.weight``) so LLaVA projector files load as they are."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

from omniplug.base import Projector
from omniplug.projectors._weights import load_into, read_state_dict
from omniplug.registry import PROJECTORS

_ACTS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


@PROJECTORS.register("mlp")
class MLPProjector(Projector):
    def __init__(self, *, in_features: int, out_features: int, hidden_features: int | None = None, depth: int = 2,
                 activation: Literal["gelu", "relu", "silu"] = "gelu", dropout: float = 0.0,
                 freeze: bool = False, ckpt_path: str | None = None) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"projector mlp: depth must be >= 1, got {depth}")
        self.in_features, self.out_features, self.freeze = in_features, out_features, freeze
        hidden = hidden_features or out_features
        layers: list[nn.Module] = [nn.Linear(in_features, hidden if depth > 1 else out_features)]
        for i in range(1, depth):
            layers.append(_ACTS[activation]())
            layers.append(nn.Linear(hidden, hidden if i < depth - 1 else out_features))
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.layers = nn.Sequential(*layers)
        if ckpt_path:
            state = read_state_dict(ckpt_path, what="projector mlp")
            load_into(self.layers, state, prefix_marker="mm_projector.", what="projector mlp", source=ckpt_path)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

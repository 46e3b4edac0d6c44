"""Projector ``mlp``: Linear -> act -> Linear ... (LLaVA-1.5's ``mlp2x_gelu``; LISA's out
projector is ``depth: 2, activation: relu``). Parameter names follow LLaVA's Sequential
(``0.weight``, ``2.weight``) so LLaVA projector files load as they are.

``output_norm: G`` ends the projector with a LayerNorm whose gain starts at ``G``: image tokens then
enter the LLM at the scale of its word embeddings. For an LLM trained from scratch this matters: its
embeddings start at ``initializer_range`` (0.02 per element, norm ~0.2) while an unnormalised
projector's tokens grow past norm 100 within a thousand steps, and the instruction's words drown
in the residual stream (a BabyAI policy trained so ignores its mission entirely). Pretrained LLMs
with a LLaVA projector leave it unset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from safetensors.torch import save_file
from torch import Tensor, nn

from omniplug.base import Projector
from omniplug.projectors._weights import load_into, read_state_dict
from omniplug.registry import PROJECTORS

_ACTS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}


@PROJECTORS.register("mlp")
class MLPProjector(Projector):
    def __init__(self, *, in_features: int, out_features: int, hidden_features: int | None = None, depth: int = 2,
                 activation: Literal["gelu", "relu", "silu"] = "gelu", dropout: float = 0.0,
                 output_norm: float | None = None, freeze: bool = False, ckpt_path: str | None = None) -> None:
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
        self.norm: nn.LayerNorm | None = None
        if output_norm is not None:
            if output_norm <= 0:
                raise ValueError(f"projector mlp: output_norm (the initial LayerNorm gain) must be > 0, got {output_norm}")
            self.norm = nn.LayerNorm(out_features)
            nn.init.constant_(self.norm.weight, output_norm)
        if ckpt_path:
            self.checkpoint_modules = ("layers",)
            state = read_state_dict(ckpt_path, what="projector mlp")
            load_into(self.layers, state, prefix_marker="mm_projector.", what="projector mlp", source=ckpt_path)

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        """Only an mlp read from ``ckpt_path`` has a file of its own; it is written back in the same layout."""
        if not self.checkpoint_modules:
            return entry
        state = {k: v.detach().contiguous().clone() for k, v in self.layers.state_dict().items()}
        save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return {**entry, "ckpt_path": f"{ref}/model.safetensors"}

    def forward(self, x: Tensor) -> Tensor:
        x = self.layers(x)
        return self.norm(x) if self.norm is not None else x

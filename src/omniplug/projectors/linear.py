"""Projector ``linear``: one Linear layer (LLaVA v1's mm_projector)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from omniplug.base import Projector
from omniplug.projectors._weights import load_into, read_state_dict
from omniplug.registry import PROJECTORS


@PROJECTORS.register("linear")
class LinearProjector(Projector):
    def __init__(self, *, in_features: int, out_features: int, freeze: bool = False, bias: bool = True,
                 ckpt_path: str | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.freeze = in_features, out_features, freeze
        self.layers = nn.Linear(in_features, out_features, bias=bias)
        if ckpt_path:
            state = read_state_dict(ckpt_path, what="projector linear")
            load_into(self.layers, state, prefix_marker="mm_projector.", what="projector linear", source=ckpt_path)

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        """The weights (read from ``ckpt_path`` or trained) travel in the export's heads file."""
        return {k: v for k, v in entry.items() if k != "ckpt_path"}

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)

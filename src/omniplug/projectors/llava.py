"""Projector ``llava``: the multi-modal projector inside a transformers LLaVA checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor
from transformers import LlavaForConditionalGeneration

from omniplug.base import Projector
from omniplug.weights.hf_local import load_pretrained, local_checkpoint
from omniplug.registry import PROJECTORS


@PROJECTORS.register("llava")
class LlavaProjector(Projector):
    supplied_by_build = ()
    checkpoint_modules = ("proj",)

    def __init__(self, *, model_name_or_path: str, freeze: bool = False) -> None:
        super().__init__()
        path = local_checkpoint(model_name_or_path, what="projector llava")
        llava = load_pretrained(LlavaForConditionalGeneration, path)
        self.proj = llava.model.multi_modal_projector
        self.in_features = self.proj.linear_1.in_features
        self.out_features = self.proj.linear_2.out_features
        self.freeze = freeze

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        """LLaVA's projector is Linear -> act -> Linear: it leaves as projector ``mlp`` reading LLaVA's
        ``mm_projector`` layout (``0.weight`` ... ``2.bias``) from ``model.safetensors``."""
        first, second = self.proj.linear_1, self.proj.linear_2
        act = type(self.proj.act).__name__.lower().replace("activation", "")  # GELUActivation, SiLU, ReLU, ...
        activation = act if act in ("gelu", "relu", "silu") else None
        if activation is None or first.bias is None or second.bias is None:
            raise ValueError(f"projector llava: cannot export a {type(self.proj.act).__name__} projector "
                             f"{'without biases ' if first.bias is None else ''}as an mlp projector")
        state = {"0.weight": first.weight, "0.bias": first.bias, "2.weight": second.weight, "2.bias": second.bias}
        save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(directory / "model.safetensors"),
                  metadata={"format": "pt"})
        return {"type": "mlp", "depth": 2, "activation": activation, "hidden_features": first.out_features,
                "freeze": self.freeze, "ckpt_path": f"{ref}/model.safetensors"}

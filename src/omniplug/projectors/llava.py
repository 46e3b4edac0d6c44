"""Projector ``llava``: the multi-modal projector inside a transformers LLaVA checkpoint."""

from __future__ import annotations

from torch import Tensor
from transformers import LlavaForConditionalGeneration

from omniplug.base import Projector
from omniplug.weights.hf_local import load_pretrained, local_checkpoint
from omniplug.registry import PROJECTORS


@PROJECTORS.register("llava")
class LlavaProjector(Projector):
    supplied_by_build = ()

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

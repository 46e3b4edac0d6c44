"""Encoder ``llava_vision``: the vision tower inside a transformers LLaVA checkpoint, unchanged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from PIL import Image
from torch import Tensor
from transformers import LlavaForConditionalGeneration

from omniplug.base import Encoder
from omniplug.encoders import _clip_common as common
from omniplug.weights.hf_local import load_pretrained, local_checkpoint, save_folder
from omniplug.registry import ENCODERS
from omniplug.types import ImageFeatures


@ENCODERS.register("llava_vision")
class LlavaVisionEncoder(Encoder):
    """Reuses ``model.model.vision_tower`` of a LlavaForConditionalGeneration checkpoint.
    Layer and CLS handling default to the checkpoint's own ``vision_feature_layer`` and
    ``vision_feature_select_strategy`` so outputs match transformers' LLaVA exactly."""

    checkpoint_modules = ("tower",)

    def __init__(
        self,
        *,
        model_name_or_path: str,
        freeze: bool = True,
        select_feature_layer: int | None = None,
        select_feature: Literal["patch", "cls_patch"] | None = None,
    ) -> None:
        super().__init__()
        path = local_checkpoint(model_name_or_path, what="encoder llava_vision")
        llava = load_pretrained(LlavaForConditionalGeneration, path)
        cfg = llava.config
        if not isinstance(cfg.vision_feature_layer, int):
            raise ValueError("llava_vision: multi-layer vision_feature_layer is not supported; set select_feature_layer")
        self.tower = llava.model.vision_tower
        vcfg = self.tower.config
        self.freeze = freeze
        self.layer = cfg.vision_feature_layer if select_feature_layer is None else select_feature_layer
        strategy = select_feature or ("patch" if cfg.vision_feature_select_strategy == "default" else "cls_patch")
        self.keep_cls = strategy == "cls_patch"
        self.processor = common.clip_processor(path, image_size=vcfg.image_size)
        self.out_dim = vcfg.hidden_size
        self.num_tokens = common.token_count(image_size=vcfg.image_size, patch_size=vcfg.patch_size, keep_cls=self.keep_cls)

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        """The tower leaves as the CLIP vision model it is (encoder ``clip``, same layer and CLS choice)."""
        save_folder(directory, self.tower, self.processor)
        return {"type": "clip", "model_name_or_path": ref, "freeze": self.freeze, "select_feature_layer": self.layer,
                "select_feature": "cls_patch" if self.keep_cls else "patch"}

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return common.preprocess(self.processor, images)

    def forward(self, pixel_values: Tensor) -> ImageFeatures:
        dtype = next(self.tower.parameters()).dtype
        out = self.tower(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        tokens = common.select_tokens(out.hidden_states, layer=self.layer, keep_cls=self.keep_cls)
        patches = tokens[:, 1:] if self.keep_cls else tokens
        return ImageFeatures(tokens=tokens, dense=common.dense_map(patches))

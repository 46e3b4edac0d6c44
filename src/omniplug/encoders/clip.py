"""Encoder ``clip``: a transformers CLIPVisionModel loaded from a local checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from PIL import Image
from torch import Tensor
from transformers import CLIPVisionModel

from omniplug.base import Encoder
from omniplug.encoders import _clip_common as common
from omniplug.weights.hf_local import exported_entry, init_from_config, load_pretrained, local_checkpoint, save_folder
from omniplug.registry import ENCODERS
from omniplug.types import ImageFeatures


@ENCODERS.register("clip")
class ClipEncoder(Encoder):
    """CLIP ViT image tower. ``select_feature_layer=-2`` is LLaVA's choice (penultimate layer);
    ``select_feature="patch"`` drops the CLS token, ``"cls_patch"`` keeps it."""

    checkpoint_modules = ("model",)

    def __init__(
        self,
        *,
        model_name_or_path: str,
        freeze: bool = True,
        select_feature_layer: int = -2,
        select_feature: Literal["patch", "cls_patch"] = "patch",
        from_scratch: bool = False,
    ) -> None:
        super().__init__()
        path = local_checkpoint(model_name_or_path, what="encoder clip")
        self.model = init_from_config(CLIPVisionModel, path) if from_scratch else load_pretrained(CLIPVisionModel, path)
        cfg = self.model.config
        n_layers = cfg.num_hidden_layers
        if not -(n_layers + 1) <= select_feature_layer <= n_layers:
            raise ValueError(f"select_feature_layer={select_feature_layer} out of range for a {n_layers}-layer CLIP")
        self.freeze = freeze
        self.layer = select_feature_layer
        self.keep_cls = select_feature == "cls_patch"
        self.processor = common.clip_processor(path, image_size=cfg.image_size)
        self.out_dim = cfg.hidden_size
        self.num_tokens = common.token_count(image_size=cfg.image_size, patch_size=cfg.patch_size, keep_cls=self.keep_cls)

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        save_folder(directory, self.model, self.processor)
        return exported_entry(entry, ref)

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return common.preprocess(self.processor, images)

    def forward(self, pixel_values: Tensor) -> ImageFeatures:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        tokens = common.select_tokens(out.hidden_states, layer=self.layer, keep_cls=self.keep_cls)
        patches = tokens[:, 1:] if self.keep_cls else tokens
        return ImageFeatures(tokens=tokens, dense=common.dense_map(patches))

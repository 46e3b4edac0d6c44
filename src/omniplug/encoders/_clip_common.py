"""Shared pieces of CLIP-tower encoders: preprocessing and hidden-layer selection."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image
from torch import Tensor
from transformers import CLIPImageProcessorPil


def clip_processor(path: Path, *, image_size: int) -> CLIPImageProcessorPil:
    """The checkpoint's own preprocessing when it ships one, else CLIP's defaults at its size."""
    if (path / "preprocessor_config.json").is_file():
        return CLIPImageProcessorPil.from_pretrained(str(path))
    return CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


def preprocess(processor: CLIPImageProcessorPil, images: list[Image.Image]) -> Tensor:
    if not images:
        raise ValueError("preprocess() needs at least one image")
    rgb = [im.convert("RGB") for im in images]
    return processor(images=rgb, return_tensors="pt")["pixel_values"]


def select_tokens(hidden_states: tuple[Tensor, ...], *, layer: int, keep_cls: bool) -> Tensor:
    feats = hidden_states[layer]
    return feats if keep_cls else feats[:, 1:]


def token_count(*, image_size: int, patch_size: int, keep_cls: bool) -> int:
    return (image_size // patch_size) ** 2 + (1 if keep_cls else 0)


def dense_map(tokens_without_cls: Tensor) -> Tensor:
    n, t, d = tokens_without_cls.shape
    side = int(round(t ** 0.5))
    return tokens_without_cls.transpose(1, 2).reshape(n, d, side, side) if side * side == t else torch.empty(0)

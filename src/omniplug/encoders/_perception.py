"""Shared pieces of the small perception nets behind the ``cells`` and ``state`` encoders: pixels from
images, and a folder of ``<name>_config.json`` + ``<name>.safetensors`` for a net and its dataclass config."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from omniplug.base import Encoder


def to_pixels(images: list[Image.Image], image_size: int, resample: int = Image.BILINEAR,
              width: int | None = None) -> Tensor:
    """PIL images -> (N, 3, image_size, width) floats in [0, 1] (no normalisation; ``width`` defaults to
    ``image_size``: square)."""
    if not images:
        raise ValueError("preprocess() needs at least one image")
    size = (width or image_size, image_size)  # PIL: (width, height)
    arrays = []
    for im in images:
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, resample)
        arrays.append(np.asarray(im, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def save_net(net: nn.Module, config: Any, out: str | Path, name: str) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    save_file({k: v.detach().contiguous() for k, v in net.state_dict().items()}, str(out / f"{name}.safetensors"))
    return out


def load_net(cls: type, config_cls: type, path: str | Path, name: str, *, what: str, command: str) -> Any:
    """``cls(config_cls(**json))`` with its weights; a clear error naming the command that writes the folder."""
    path = Path(path)
    config, weights = path / f"{name}_config.json", path / f"{name}.safetensors"
    if not config.is_file() or not weights.is_file():
        raise FileNotFoundError(f"no {what} at {path} (expected {config.name} and {weights.name}); train one with "
                                f"`{command} --out {path}`")
    try:
        net = cls(config_cls(**json.loads(config.read_text())))
        net.load_state_dict(load_file(str(weights)))
    except Exception as exc:  # truncated file, edited config, weights of another shape
        raise ValueError(f"the {what} at {path} does not load ({type(exc).__name__}: {exc}); write it again with "
                         f"`{command} --out {path}`") from exc
    return net


class PerceptionEncoder(Encoder):
    """An encoder around a small trained perception net (the attribute named ``net_name``) that stays frozen,
    whatever ``train_mode`` asks, when ``frozen_net`` is set; ``perceive`` checks the pixels and runs it."""

    net_name: str = "net"
    frozen_net: bool = False
    image_size: int  # pixels high (and wide, unless image_width says otherwise)
    image_width: int | None = None

    def requires_grad_(self, requires_grad: bool = True) -> "PerceptionEncoder":
        super().requires_grad_(requires_grad)
        if self.frozen_net:
            getattr(self, self.net_name).requires_grad_(False)
        return self

    def perceive(self, pixel_values: Tensor) -> Any:
        width = self.image_width or self.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, self.image_size, width):
            raise ValueError(f"encoder {type(self).__name__} expects (N, 3, {self.image_size}, {width}) "
                             f"pixels, got {tuple(pixel_values.shape)}")
        net = getattr(self, self.net_name)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen_net):
            return net(pixel_values.to(next(net.parameters()).dtype))

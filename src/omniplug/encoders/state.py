"""Encoder ``state``: a frame read as the low-dimensional state it shows, one token per image.

The continuous-control counterpart of ``cells``. A from-scratch ViT trained from Reacher's torques
alone never finds the few pixels of the target and the arm: every action adapter stays at the
observation-blind baseline (bench/actions/README.md). PaLM-E gives its LLM "state estimation"
inputs for such scenes; here a small CNN reader, trained on the states stored with the
demonstrations (``omniplug demos reader``), estimates the state from pixels:

    frame (S, S, 3) --StateReader--> standardised state estimate (K,)     (strided CNN -> MLP)   (Reacher: cos/sin of both
                                                                        joints, target x, y)
                    --Linear------> one (dim,) token for the input projector

With ``history: 2`` in the demos the LLM sees two such tokens and can take the velocity from their
difference. The reader stays frozen (``freeze_reader``); the linear map and everything after it train.

``fourier: F`` feeds the linear map the estimate together with its sines and cosines at F octaves (pi, 2 pi, 4 pi,
...; NeRF's positional encoding): a from-scratch LLM then tells apart states a few hundredths apart, which fine
continuous control needs (Reacher: a 4-layer LLM memorised 64 samples' torques to L1 0.012 in 400 steps with F = 4,
and stayed at 0.056 after 800 without).

``drop_dims: [i, ...]`` hides state dimensions from the LLM (they read as the training mean): ablations of what the
agent may look at, e.g. highway's set cruise speed (26), from which a driver can read its own last decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor, nn

from omniplug.encoders._perception import PerceptionEncoder, load_net, save_net, to_pixels
from omniplug.registry import ENCODERS
from omniplug.types import ImageFeatures



@dataclass
class StateReaderConfig:
    state_dim: int
    image_size: int = 64  # pixels high (and wide unless image_width is given)
    width: int = 64  # convolution channels
    mean: list[float] = field(default_factory=list)  # of the training states: the reader predicts (s - mean) / std
    std: list[float] = field(default_factory=list)
    image_width: int | None = None  # pixels wide, for frames that are not square (highway's wide view)

    def __post_init__(self) -> None:
        if self.state_dim < 1 or self.image_size % 8 or (self.image_width or 8) % 8:
            raise ValueError(f"a state reader needs state_dim >= 1 and an image size divisible by 8, got "
                             f"{self.state_dim}, {self.image_size} x {self.image_width or self.image_size}")
        self.mean = list(self.mean) or [0.0] * self.state_dim
        self.std = list(self.std) or [1.0] * self.state_dim
        if len(self.mean) != self.state_dim or len(self.std) != self.state_dim:
            raise ValueError(f"mean/std need {self.state_dim} values each, got {len(self.mean)}, {len(self.std)}")


class StateReader(nn.Module):
    """Pixels (N, 3, H, W) in [0, 1] -> standardised state estimates (N, K): three strided convolutions, then
    an MLP over the flattened map (measured better than spatial-softmax keypoints on Reacher at this budget)."""

    def __init__(self, config: StateReaderConfig) -> None:
        super().__init__()
        self.config = config
        w = config.width
        cells = (config.image_size // 8) * ((config.image_width or config.image_size) // 8)
        self.body = nn.Sequential(
            nn.Conv2d(3, w // 2, 5, 2, 2), nn.GELU(), nn.Conv2d(w // 2, w, 3, 2, 1), nn.GELU(),
            nn.Conv2d(w, w, 3, 2, 1), nn.GELU(), nn.Flatten(), nn.Linear(w * cells, 256), nn.GELU(),
            nn.Linear(256, config.state_dim))

    def forward(self, pixels: Tensor) -> Tensor:
        return self.body(pixels)

    def standardise(self, states: Tensor) -> Tensor:
        mean, std = (torch.tensor(v, dtype=states.dtype, device=states.device) for v in (self.config.mean, self.config.std))
        return (states - mean) / std

    def save(self, out: str | Path) -> Path:
        return save_net(self, self.config, out, "reader")

    @classmethod
    def load(cls, path: str | Path) -> "StateReader":
        return load_net(cls, StateReaderConfig, path, "reader", what="state reader",
                        command="omniplug demos reader --data DEMOS_DIR")


@ENCODERS.register("state")
class StateEncoder(PerceptionEncoder):
    """One token per image: the frozen reader's state estimate through a trainable linear map.

    ``reader``: a directory written by ``omniplug demos reader`` (required unless ``from_scratch``, which
    starts a random reader that trains with the rest: tests and ablations; give ``state_dim`` then)."""

    def __init__(self, *, reader: str | None = None, dim: int = 128, freeze: bool = False, freeze_reader: bool = True,
                 from_scratch: bool = False, state_dim: int | None = None, image_size: int = 64,
                 fourier: int = 0, drop_dims: list[int] | None = None) -> None:
        super().__init__()
        if reader is None and not (from_scratch and state_dim):
            raise ValueError("encoder state needs `reader: DIR` (train one with `omniplug demos reader --data DEMOS "
                             "--out DIR`) or `from_scratch: true` with `state_dim`")
        self.reader = (StateReader(StateReaderConfig(state_dim=state_dim, image_size=image_size)) if reader is None
                       else StateReader.load(reader))
        self.net_name, self.freeze, self.frozen_net = "reader", freeze, freeze_reader and reader is not None
        self.image_size, self.image_width = self.reader.config.image_size, self.reader.config.image_width
        if fourier < 0:
            raise ValueError(f"encoder state: fourier (frequency bands) must be >= 0, got {fourier}")
        self.register_buffer("bands", torch.pi * 2.0 ** torch.arange(fourier, dtype=torch.float32), persistent=False)
        k = self.reader.config.state_dim
        drop = sorted({d for d in drop_dims or []})
        if any(not isinstance(d, int) or not 0 <= d < k for d in drop):
            raise ValueError(f"encoder state: drop_dims {drop} must index the reader's {k} state dimensions (0..{k - 1})")
        keep = torch.ones(k)
        keep[drop] = 0.0
        self.register_buffer("keep", keep, persistent=False)
        self.embed = nn.Linear(self.reader.config.state_dim * (1 + 2 * fourier), dim)
        self.out_dim, self.num_tokens = dim, 1
        self.requires_grad_(True)

    def preprocess(self, images: list[Image.Image]) -> Tensor:
        return to_pixels(images, self.image_size, width=self.image_width)

    def forward(self, pixel_values: Tensor) -> ImageFeatures:
        state = self.perceive(pixel_values) * self.keep  # a dropped dimension reads as the training mean (0)
        if len(self.bands):  # (N, K) -> (N, K (1 + 2F)): the estimate and its sines / cosines at F frequencies
            angles = (state.unsqueeze(-1) * self.bands).flatten(1)
            state = torch.cat([state, angles.sin(), angles.cos()], dim=1)
        return ImageFeatures(tokens=self.embed(state).unsqueeze(1))

"""Per-embodiment action normalisation, stored as buffers so that it travels with the weights.

Continuous actions are mapped per dimension from ``[low, high]`` to ``[-1, 1]`` (by default the
1st and 99th percentiles of the demonstrations, as OpenVLA does) and clipped. Decoders work in the
normalised space and apply :meth:`Normalizer.denormalize` on the way out: an environment must
never receive normalised actions.

``low``/``high`` are persistent buffers of the decoder, so ``omniplug.weights.save_trainable``
writes them next to the trained weights and loading a checkpoint restores them.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class Normalizer(nn.Module):
    def __init__(self, dim: int, *, low: list[float] | None = None, high: list[float] | None = None) -> None:
        super().__init__()
        low_t = torch.full((dim,), -1.0) if low is None else torch.tensor(low, dtype=torch.float32)
        high_t = torch.full((dim,), 1.0) if high is None else torch.tensor(high, dtype=torch.float32)
        if low_t.shape != (dim,) or high_t.shape != (dim,):
            raise ValueError(f"normalisation bounds must have {dim} values each, "
                             f"got {list(low_t.shape)} and {list(high_t.shape)}")
        self.register_buffer("low", low_t)
        self.register_buffer("high", high_t)
        self.clipped = 0  # action values clipped into range so far (inputs outside [low, high])
        self._warned = False

    @property
    def dim(self) -> int:
        return int(self.low.shape[0])

    def set_bounds(self, low: list[float], high: list[float]) -> None:
        with torch.no_grad():
            self.low.copy_(torch.tensor(low, dtype=torch.float32))
            self.high.copy_(torch.tensor(high, dtype=torch.float32))

    def _span(self) -> Tensor:
        # a dimension the demonstrations never moved keeps a unit span instead of dividing by zero
        span = self.high - self.low
        return torch.where(span.abs() < 1e-8, torch.ones_like(span), span)

    def normalize(self, actions: Tensor) -> Tensor:
        """(..., D) in environment units -> (..., D) in [-1, 1]; values outside are clipped and counted."""
        x = 2.0 * (actions.to(self.low.dtype) - self.low) / self._span() - 1.0
        outside = int(((x < -1.0 - 1e-6) | (x > 1.0 + 1e-6)).sum())
        if outside:
            self.clipped += outside
            if not self._warned:
                log.warning("%d action value(s) outside the normalisation range were clipped (low=%s, high=%s)",
                            outside, self.low.tolist(), self.high.tolist())
                self._warned = True
        return x.clamp(-1.0, 1.0)

    def denormalize(self, x: Tensor) -> Tensor:
        """(..., D) in [-1, 1] -> environment units."""
        return (x.clamp(-1.0, 1.0) + 1.0) / 2.0 * self._span() + self.low

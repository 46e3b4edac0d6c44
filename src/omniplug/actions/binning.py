"""Uniform binning of normalised actions (RT-2 / OpenVLA): ``num_bins`` equal bins over [-1, 1].

Bin ``i`` covers ``[-1 + i w, -1 + (i + 1) w)`` with ``w = 2 / num_bins``; decoding returns the
bin centre, so the round-trip error is at most ``w / 2`` in normalised units.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_bins(x: Tensor, num_bins: int) -> Tensor:
    """Normalised values in [-1, 1] (clipped) -> bin indices in [0, num_bins)."""
    x = x.clamp(-1.0, 1.0)
    idx = torch.floor((x + 1.0) / 2.0 * num_bins).long()
    return idx.clamp(0, num_bins - 1)


def from_bins(idx: Tensor, num_bins: int) -> Tensor:
    """Bin indices -> bin centres in [-1, 1]."""
    width = 2.0 / num_bins
    return -1.0 + (idx.float() + 0.5) * width

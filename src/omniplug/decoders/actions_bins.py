"""Decoder ``act_bins``: continuous actions binned uniformly per dimension (RT-2 / OpenVLA).

Each dimension is normalised to [-1, 1] with the embodiment's statistics (buffers saved with the
weights), cut into ``num_bins`` equal bins, and said as one new token ``<act_bin_i>`` per
dimension and step: ``chunk * D`` tokens after ``<act>``. Decoding returns bin centres (error at
most half a bin) and undoes the normalisation.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from omniplug.actions.binning import from_bins, to_bins
from omniplug.actions.decoder import TokenActionDecoder, resolve_space
from omniplug.registry import DECODERS
from omniplug.config.schema import ConfigError


@DECODERS.register("act_bins")
class BinnedActionDecoder(TokenActionDecoder):
    def __init__(self, *, demos: str | None = None, action_dim: int | None = None, low: list[float] | None = None,
                 high: list[float] | None = None, bounds: Literal["q01_q99", "min_max"] = "q01_q99",
                 num_bins: int = 256, token: str = "<act>", chunk: int = 1, token_loss_weight: float = 0.0,
                 freeze: bool = False) -> None:
        space, lo, hi = resolve_space(demos=demos, actions=None, action_dim=action_dim, low=low, high=high, bounds=bounds)
        if space.is_discrete:
            raise ConfigError("act_bins is for continuous actions; for discrete ones use act_words or act_tokens")
        if num_bins < 2:
            raise ConfigError(f"num_bins must be >= 2, got {num_bins}")
        self.num_bins = num_bins
        self.extra_tokens = [f"<{token.strip('<>')}_bin_{i}>" for i in range(num_bins)]
        super().__init__(token=token, chunk=chunk, space=space, low=lo, high=hi, freeze=freeze,
                         token_loss_weight=token_loss_weight)

    def slot_texts(self) -> list[list[str]]:
        return [list(self.extra_tokens) for _ in range(self.chunk * self.space.dim)]

    def encode_codes(self, prepared: Tensor) -> list[int]:
        return to_bins(prepared.reshape(-1), self.num_bins).tolist()

    def codes_to_actions(self, codes: Tensor) -> Tensor:
        return from_bins(codes, self.num_bins).reshape(codes.shape[0], self.chunk, self.space.dim)

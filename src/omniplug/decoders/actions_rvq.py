"""Decoder ``act_rvq``: continuous actions through a learned residual-VQ tokenizer (Szot et al. 2024).

The chunk of the next ``chunk`` normalised actions is one vector; a residual VQ of ``levels``
codebooks (fitted with k-means on the demonstrations named by ``demos`` when the model is built)
turns it into ``levels`` codes, each said as one new token ``<act_rvq{level}_{code}>``. The
codebooks and the normalisation statistics are buffers saved with the weights, so a trained
checkpoint does not need the demonstrations to act.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from omniplug.actions.decoder import TokenActionDecoder, resolve_space
from omniplug.actions.episodes import read_actions
from omniplug.actions.rvq import ResidualVQ
from omniplug.actions.space import ActionTarget
from omniplug.registry import DECODERS
from omniplug.config.schema import ConfigError


@DECODERS.register("act_rvq")
class ResidualVQActionDecoder(TokenActionDecoder):
    def __init__(self, *, demos: str | None = None, action_dim: int | None = None, low: list[float] | None = None,
                 high: list[float] | None = None, bounds: Literal["q01_q99", "min_max"] = "q01_q99",
                 levels: int = 2, codebook_size: int = 128, fit_iters: int = 20, seed: int = 0,
                 token: str = "<act>", chunk: int = 1, token_loss_weight: float = 0.0, freeze: bool = False) -> None:
        space, lo, hi = resolve_space(demos=demos, actions=None, action_dim=action_dim, low=low, high=high, bounds=bounds)
        if space.is_discrete:
            raise ConfigError("act_rvq is for continuous actions; for discrete ones use act_words or act_tokens")
        self.levels, self.codebook_size = levels, codebook_size
        stem = token.strip("<>")
        self.extra_tokens = [f"<{stem}_rvq{lv}_{c}>" for lv in range(levels) for c in range(codebook_size)]
        super().__init__(token=token, chunk=chunk, space=space, low=lo, high=hi, freeze=freeze,
                         token_loss_weight=token_loss_weight)
        self.rvq = ResidualVQ(dim=chunk * space.dim, levels=levels, codebook_size=codebook_size)
        self.fit_history: list[float] = []
        if demos is not None:
            self.fit_history = self.rvq.fit(self._chunks(read_actions(demos)), iters=fit_iters, seed=seed)

    def _chunks(self, episodes: list[np.ndarray]) -> Tensor:
        """Every step's normalised action chunk, flattened: (N, chunk * D)."""
        rows = [self.prepare_target(ActionTarget(future=ep[t:]), None).reshape(-1)
                for ep in episodes for t in range(len(ep))]
        return torch.stack(rows)

    def slot_texts(self) -> list[list[str]]:
        return [self.extra_tokens[lv * self.codebook_size:(lv + 1) * self.codebook_size] for lv in range(self.levels)]

    def encode_codes(self, prepared: Tensor) -> list[int]:
        return self.rvq.encode(prepared.reshape(1, -1))[0].tolist()

    def codes_to_actions(self, codes: Tensor) -> Tensor:
        return self.rvq.decode(codes).reshape(codes.shape[0], self.chunk, self.space.dim).clamp(-1.0, 1.0)

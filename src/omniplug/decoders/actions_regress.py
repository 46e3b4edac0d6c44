"""Decoder ``act_regress``: actions regressed from the ``<act>`` hidden state (the embedding hand-off).

The LLM's hidden state at ``<act>``, after the output projector (``prompt_dim`` wide), goes
through an MLP head to the next ``chunk`` actions: normalised continuous values trained with an
L1 (or MSE) loss, or, for a discrete space, one logit per action trained with cross entropy.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from omniplug.actions.decoder import ActionDecoder, ActionOutput, resolve_space
from omniplug.registry import DECODERS
from omniplug.types import DecoderInput, DecoderOutput


@DECODERS.register("act_regress")
class RegressionActionDecoder(ActionDecoder):
    def __init__(self, *, demos: str | None = None, actions: list[str] | None = None, action_dim: int | None = None,
                 low: list[float] | None = None, high: list[float] | None = None,
                 bounds: Literal["q01_q99", "min_max"] = "q01_q99", prompt_dim: int = 256, hidden_dim: int = 256,
                 depth: int = 2, loss: Literal["l1", "mse"] = "l1", token: str = "<act>", chunk: int = 1,
                 freeze: bool = False) -> None:
        space, lo, hi = resolve_space(demos=demos, actions=actions, action_dim=action_dim, low=low, high=high, bounds=bounds)
        super().__init__(token=token, chunk=chunk, space=space, low=lo, high=hi, freeze=freeze)
        self.prompt_dim = prompt_dim
        self.loss_type = loss
        out = chunk * (len(space.names) if space.is_discrete else space.dim)
        layers: list[nn.Module] = []
        width = prompt_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, out))
        self.head = nn.Sequential(*layers)

    def forward(self, inp: DecoderInput) -> ActionOutput:
        y = self.head(inp.prompts[:, 0])  # (M, out)
        m = y.shape[0]
        if self.space.is_discrete:
            logits = y.reshape(m, self.chunk, len(self.space.names))
            return ActionOutput(batch_index=inp.batch_index, actions=logits.argmax(-1), logits=logits)
        return ActionOutput(batch_index=inp.batch_index, actions=y.reshape(m, self.chunk, self.space.dim))

    def loss(self, out: DecoderOutput, targets: list[Any]) -> dict[str, Tensor]:
        assert isinstance(out, ActionOutput)
        target = torch.stack([t.to(out.actions.device) for t in targets])
        if self.space.is_discrete:
            return {"ce": F.cross_entropy(out.logits.flatten(0, 1).float(), target.flatten())}
        fn = F.l1_loss if self.loss_type == "l1" else F.mse_loss
        return {self.loss_type: fn(out.actions.float(), target.float())}

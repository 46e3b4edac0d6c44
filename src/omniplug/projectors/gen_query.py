"""Projector ``gen_transformer``: K trigger hiddens -> S conditioning vectors through learnable queries.

The output side of NExT-GPT / GILL / VisionLLM v2: ``num_queries`` learned query vectors attend
(a small transformer decoder: self-attention among queries, cross-attention to the K hiddens)
to the LLM's hidden states at the K generation tokens, and a final linear layer maps them to
the decoder's width. Input ``(M, K, in_features)`` -> output ``(M, num_queries, out_features)``,
e.g. K = 4 hiddens of 4096 -> 77 x 768 for Stable Diffusion 1.5's ``encoder_hidden_states``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from omniplug.base import Projector
from omniplug.registry import PROJECTORS


@PROJECTORS.register("gen_transformer")
class GenQueryProjector(Projector):
    def __init__(self, *, in_features: int, out_features: int, num_queries: int = 77, width: int = 512,
                 depth: int = 2, heads: int = 8, dropout: float = 0.0, freeze: bool = False) -> None:
        super().__init__()
        if num_queries < 1 or depth < 1:
            raise ValueError(f"projector gen_transformer: num_queries and depth must be >= 1, got {num_queries}, {depth}")
        if width % heads:
            raise ValueError(f"projector gen_transformer: width={width} must be divisible by heads={heads}")
        self.in_features, self.out_features, self.num_queries, self.freeze = in_features, out_features, num_queries, freeze
        self.input = nn.Linear(in_features, width)
        self.queries = nn.Parameter(torch.randn(num_queries, width) * width**-0.5)
        layer = nn.TransformerDecoderLayer(width, heads, dim_feedforward=4 * width, dropout=dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, depth)
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, out_features)

    def forward(self, x: Tensor) -> Tensor:
        memory = self.input(x)  # (M, K, width)
        queries = self.queries.to(memory.dtype).expand(x.shape[0], -1, -1)
        return self.output(self.norm(self.blocks(queries, memory)))

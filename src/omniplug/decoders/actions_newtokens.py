"""Decoder ``act_tokens``: discrete actions as new tokens added to the tokenizer.

Action ``pick up`` becomes the token ``<act_pick_up>``; a training answer for a chunk of two
actions reads ``<act><act_forward><act_left>``. The new rows of the embedding and LM head train
(LoRA's trainable tokens in train_mode 1). ``token_loss_weight`` adds a cross entropy on the action tokens
alone, ``action_weights`` ({name: weight}) weighs actions in it, e.g. ``{slower: 3}`` for a driver that must
not brake late. ``action_bias`` ({name: b}) acts at decoding only: b is added to the named action's logit before
the choice (a trained agent made more cautious without retraining, e.g. ``{slower: 1.0}``).
"""

from __future__ import annotations

import re

from torch import Tensor

from omniplug.actions.decoder import TokenActionDecoder, resolve_space
from omniplug.registry import DECODERS
from omniplug.config.schema import ConfigError


@DECODERS.register("act_tokens")
class NewTokenActionDecoder(TokenActionDecoder):
    def __init__(self, *, demos: str | None = None, actions: list[str] | None = None, token: str = "<act>",
                 chunk: int = 1, token_loss_weight: float = 0.0, action_weights: dict[str, float] | None = None,
                 action_bias: dict[str, float] | None = None, freeze: bool = False) -> None:
        space, _, _ = resolve_space(demos=demos, actions=actions, action_dim=None, low=None, high=None, bounds="min_max")
        if not space.is_discrete:
            raise ConfigError("act_tokens gives discrete actions their own tokens; for continuous actions use act_bins, "
                              "act_rvq or act_regress")
        stem = token.strip("<>")
        self.extra_tokens = [f"<{stem}_{re.sub(r'[^a-z0-9]+', '_', n.lower()).strip('_')}>" for n in space.names]
        if len(set(self.extra_tokens)) != len(self.extra_tokens):
            raise ConfigError(f"action names {list(space.names)} give clashing tokens {self.extra_tokens}")
        super().__init__(token=token, chunk=chunk, space=space, low=None, high=None, freeze=freeze,
                         token_loss_weight=token_loss_weight, action_weights=action_weights, action_bias=action_bias)

    def slot_texts(self) -> list[list[str]]:
        return [list(self.extra_tokens) for _ in range(self.chunk)]

    def encode_codes(self, prepared: Tensor) -> list[int]:
        return prepared.tolist()

    def codes_to_actions(self, codes: Tensor) -> Tensor:
        return codes

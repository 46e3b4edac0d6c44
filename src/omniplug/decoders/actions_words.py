"""Decoder ``act_words``: discrete actions as semantically aligned tokens (existing vocabulary words).

Each action is said with words the LLM already knows ("left", "forward", "pick up"): a training
answer for a chunk of two actions reads ``<act> forward left``. Nothing is added to the vocabulary
but the trigger. Decoding picks, per step, the word whose tokens the LLM scores highest.
"""

from __future__ import annotations

from torch import Tensor

from omniplug.actions.decoder import TokenActionDecoder, resolve_space
from omniplug.registry import DECODERS
from omniplug.config.schema import ConfigError


@DECODERS.register("act_words")
class SemanticActionDecoder(TokenActionDecoder):
    def __init__(self, *, demos: str | None = None, actions: list[str] | None = None, words: list[str] | None = None,
                 token: str = "<act>", chunk: int = 1, token_loss_weight: float = 0.0,
                 action_bias: dict[str, float] | None = None, freeze: bool = False) -> None:
        space, _, _ = resolve_space(demos=demos, actions=actions, action_dim=None, low=None, high=None, bounds="min_max")
        if not space.is_discrete:
            raise ConfigError("act_words says discrete actions as words; for continuous actions use act_bins, act_rvq "
                              "or act_regress")
        self.words = list(words) if words is not None else list(space.names)
        if len(self.words) != len(space.names):
            raise ConfigError(f"words needs one word per action ({len(space.names)}: {list(space.names)}), got {self.words}")
        super().__init__(token=token, chunk=chunk, space=space, low=None, high=None, freeze=freeze,
                         token_loss_weight=token_loss_weight, action_bias=action_bias)

    def slot_texts(self) -> list[list[str]]:
        return [[" " + w.strip() for w in self.words] for _ in range(self.chunk)]

    def encode_codes(self, prepared: Tensor) -> list[int]:
        return prepared.tolist()

    def codes_to_actions(self, codes: Tensor) -> Tensor:
        return codes

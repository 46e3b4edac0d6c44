"""What every action decoder shares, and the machinery of the token ("text") adapters.

Every action decoder has task ``act``, trigger ``<act>`` and returns, per ``<act>`` occurrence,
the next ``chunk`` actions in environment units: ``(chunk,)`` int64 action ids for a discrete
space, ``(chunk, D)`` float32 for a continuous one (normalisation undone on the way out).

Token adapters (:class:`TokenActionDecoder`) make the LLM *say* the action: a training answer is
``<act>`` followed by ``answer_text(target)`` (one group of tokens per slot: one slot per action
for discrete spaces, one per dimension and step for bins, one per level for residual VQ), learnt by
the ordinary LM loss. At inference the decoder reads the logits that predicted the tokens after
``<act>`` (``DecoderInput.answer_logits``) and picks, slot by slot, the best of its own candidates:
the result is always a valid action, whatever else the LLM might have preferred.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from omniplug.actions.episodes import read_meta
from omniplug.actions.normalize import Normalizer
from omniplug.actions.space import ActionSpace, ActionTarget
from omniplug.base import Decoder, Tokenizer
from omniplug.config.schema import ConfigError
from omniplug.types import DecoderInput, DecoderOutput


@dataclass
class ActionOutput(DecoderOutput):
    """Per occurrence: discrete action ids ``(M, k)`` or normalised continuous actions ``(M, k, D)``."""

    actions: Tensor
    codes: Tensor | None = None  # token adapters: the candidate chosen for each slot (M, slots)
    logits: Tensor | None = None  # heads that classify: (M, k, n) action logits
    answer_ids: Tensor | None = None  # token adapters with token_loss_weight > 0: what the loss scores
    answer_logits: Tensor | None = None


def resolve_space(*, demos: str | None, actions: list[str] | None, action_dim: int | None, low: list[float] | None,
                  high: list[float] | None,
                  bounds: str) -> tuple[ActionSpace, list[float] | None, list[float] | None]:
    """The action space and normalisation bounds from a demonstrations directory (its ``meta.json``)
    or from explicit settings. ``bounds``: which statistics bound continuous actions (``q01_q99`` or
    ``min_max``). Returns (space, low, high) with low/high None for discrete spaces."""
    if demos is not None:
        meta = read_meta(demos)
        space = ActionSpace.from_json(meta["action_space"])
        if space.is_discrete:
            if actions is not None and list(actions) != list(space.names):
                raise ConfigError(f"actions {actions} differ from the demonstrations' {list(space.names)} in {demos}")
            return space, None, None
        stats = meta.get("stats")
        if stats is None:
            raise ConfigError(f"{demos}/meta.json has no action statistics; re-collect the demonstrations")
        lo_key, hi_key = {"q01_q99": ("q01", "q99"), "min_max": ("min", "max")}[bounds]
        return space, list(low or stats[lo_key]), list(high or stats[hi_key])
    if actions is not None:
        return ActionSpace(kind="discrete", names=tuple(actions), dim=1), None, None
    if action_dim is not None:
        lo = list(low) if low is not None else [-1.0] * action_dim
        hi = list(high) if high is not None else [1.0] * action_dim
        return ActionSpace(kind="continuous", dim=action_dim, low=tuple(lo), high=tuple(hi)), lo, hi
    raise ConfigError("an action decoder needs its action space: set 'demos' (a directory written by "
                      "`omniplug demos collect`), or 'actions' (discrete names), or 'action_dim' (+ 'low'/'high')")


class ActionDecoder(Decoder):
    """Base of the action adapters: space, chunking, normalisation and postprocessing."""

    default_task: ClassVar[str] = "act"
    default_token: ClassVar[str] = "<act>"
    output_kind: ClassVar[str] = "actions"

    def __init__(self, *, token: str, chunk: int, space: ActionSpace, low: list[float] | None,
                 high: list[float] | None, freeze: bool) -> None:
        super().__init__()
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.tokens = [token]
        self.chunk = chunk
        self.space = space
        self.freeze = freeze
        self.normalizer = None if space.is_discrete else Normalizer(space.dim, low=low, high=high)

    def prepare_target(self, target: Any, image: Image.Image | None) -> Tensor:
        """An :class:`ActionTarget` -> the next ``chunk`` actions: (k,) long ids or (k, D) normalised floats."""
        if not isinstance(target, ActionTarget):
            target = ActionTarget(future=np.asarray(target))
        chunk = target.chunk(self.chunk)
        if self.space.is_discrete:
            ids = torch.as_tensor(np.asarray(chunk).reshape(self.chunk), dtype=torch.long)
            n = len(self.space.names)
            if bool(((ids < 0) | (ids >= n)).any()):
                raise ValueError(f"discrete action ids {ids.tolist()} outside [0, {n}) for actions {list(self.space.names)}")
            return ids
        values = torch.as_tensor(np.asarray(chunk, dtype=np.float32).reshape(self.chunk, self.space.dim))
        return self.normalizer.normalize(values)

    def postprocess(self, out: DecoderOutput, inp: DecoderInput) -> list[np.ndarray]:
        assert isinstance(out, ActionOutput)
        if self.space.is_discrete:
            return [a for a in out.actions.detach().cpu().numpy().astype(np.int64)]
        env_units = self.normalizer.denormalize(out.actions.detach().float())
        return [a for a in env_units.cpu().numpy().astype(np.float32)]


class TokenActionDecoder(ActionDecoder):
    """Actions as token sequences predicted by the LLM's head (see the module docstring).

    Subclasses give ``slot_texts()`` (per slot, the text of each candidate), ``encode_codes(target)``
    (the candidate index per slot for a prepared target) and ``codes_to_actions(codes)``.
    """

    reads_prompts: ClassVar[bool] = False

    def __init__(self, *, token_loss_weight: float, action_weights: dict[str, float] | None = None,
                 action_bias: dict[str, float] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prompt_dim = 0
        self.token_loss_weight = token_loss_weight
        self.action_weights = self._named("action_weights", action_weights)
        if any(not w > 0 for w in self.action_weights.values()):
            raise ConfigError(f"action_weights must be > 0, got {self.action_weights}")
        if self.action_weights and not token_loss_weight:
            raise ConfigError("action_weights weigh the action-token cross entropy: set token_loss_weight > 0 too")
        self.action_bias = self._named("action_bias", action_bias)
        self._slot_ids: list[list[tuple[int, ...]]] | None = None
        self.answer_length = len(self.slot_texts())  # refined by bind_tokenizer (multi-token candidates)

    def _named(self, key: str, values: dict[str, float] | None) -> dict[str, float]:
        """A {discrete action name: number} option, checked against the space's names."""
        values = {str(k): float(v) for k, v in dict(values or {}).items()}
        names = list(self.space.names or ())
        unknown = sorted(set(values) - set(names))
        if values and (unknown or not names):
            raise ConfigError(f"{key} names {unknown or list(values)}, not actions of this space {names}: "
                              f"name discrete actions")
        return values

    # --- subclass hooks -------------------------------------------------------------------------
    def slot_texts(self) -> list[list[str]]:
        raise NotImplementedError

    def encode_codes(self, prepared: Tensor) -> list[int]:
        raise NotImplementedError

    def codes_to_actions(self, codes: Tensor) -> Tensor:
        raise NotImplementedError

    # --- tokens -----------------------------------------------------------------------------------
    def bind_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Token ids of every slot's candidates, as they are tokenized right after the trigger."""
        trigger = "".join(self.tokens)
        base = tokenizer.encode(trigger, special=True)
        slots = self.slot_texts()
        cache: dict[str, tuple[int, ...]] = {}
        ids: list[list[tuple[int, ...]]] = []
        for j, texts in enumerate(slots):
            row = []
            for text in texts:
                if text not in cache:
                    full = tokenizer.encode(trigger + text, special=True)
                    if full[: len(base)] != base or len(full) == len(base):
                        raise ConfigError(f"action text {text!r} does not tokenize as its own tokens after {trigger!r}")
                    cache[text] = tuple(full[len(base):])
                row.append(cache[text])
            ids.append(row)
            _check_prefix_free(row, texts)
            if j:  # the answer is the concatenation of the slots: their tokens must not merge
                first = slots[j - 1][0]
                for text, seq in zip(texts, row):
                    joined = tokenizer.encode(trigger + first + text, special=True)
                    if tuple(joined) != tuple(base) + cache[first] + seq:
                        raise ConfigError(f"action texts {first!r} + {text!r} tokenize differently together than "
                                          f"apart; choose action words that start with a space or new tokens")
        if self.action_bias and any(len(seq) > 1 for row in ids for seq in row):
            raise ConfigError(f"action_bias needs one token per action; {slots[0]} are several tokens each here "
                              f"(use act_tokens, or single-token words)")
        self._slot_ids = ids
        self.answer_length = sum(max(len(s) for s in row) for row in ids)

    def answer_text(self, target: Any) -> str:
        codes = self.encode_codes(self.prepare_target(target, None))
        slots = self.slot_texts()
        return "".join(slots[j][c] for j, c in enumerate(codes))

    # --- decoding ---------------------------------------------------------------------------------
    def forward(self, inp: DecoderInput) -> ActionOutput:
        if inp.answer_logits is None:
            raise RuntimeError(f"{type(self).__name__} reads the logits after {self.tokens[0]!r} but the model "
                               f"supplied none (is answer_length > 0 and the decoder built by build_model?)")
        if self._slot_ids is None:
            raise RuntimeError(f"{type(self).__name__}: bind_tokenizer was not called (build the model with build_model)")
        codes = self._decode(inp.answer_logits.detach())
        keep = self.token_loss_weight > 0
        return ActionOutput(batch_index=inp.batch_index, actions=self.codes_to_actions(codes), codes=codes,
                            answer_ids=inp.answer_ids if keep else None, answer_logits=inp.answer_logits if keep else None)

    def _decode(self, logits: Tensor) -> Tensor:
        """(M, S, V) -> (M, slots): per slot the candidate with the highest logits, token by token; ``action_bias``
        ({name: b}) adds b to a named action's logit first (b log-odds in its favour against every other action)."""
        slots = self._slot_ids
        m = logits.shape[0]
        codes = torch.zeros(m, len(slots), dtype=torch.long, device=logits.device)
        if all(len(seq) == 1 for row in slots for seq in row):  # one token per slot: one gather per slot
            names = list(self.space.names or ())
            bias = torch.tensor([self.action_bias.get(n, 0.0) for n in names] if self.action_bias else 0.0,
                                device=logits.device)
            for j, row in enumerate(slots):
                allowed = torch.tensor([seq[0] for seq in row], device=logits.device)
                codes[:, j] = (logits[:, j, allowed].float() + bias).argmax(dim=-1)
            return codes
        for i in range(m):  # candidates of several tokens: walk a trie per occurrence
            pos = 0
            for j, row in enumerate(slots):
                alive = list(range(len(row)))
                depth = 0  # prefix-free candidates: while several are alive, all are longer than depth
                while len(alive) > 1 and pos + depth < logits.shape[1]:
                    nxt = sorted({row[c][depth] for c in alive})
                    best = nxt[int(logits[i, pos + depth, torch.tensor(nxt, device=logits.device)].argmax())]
                    alive = [c for c in alive if row[c][depth] == best]
                    depth += 1
                codes[i, j] = alive[0]
                pos += len(row[alive[0]])
        return codes

    def loss(self, out: DecoderOutput, targets: list[Any]) -> dict[str, Tensor]:
        """The LM loss already trains the action tokens; ``token_loss_weight > 0`` adds a cross
        entropy on the action tokens alone (an extra weight on them)."""
        assert isinstance(out, ActionOutput)
        if not self.token_loss_weight or out.answer_ids is None:
            return {}
        valid = out.answer_ids >= 0
        if not bool(valid.any()):
            return {"token_ce": out.answer_logits.sum() * 0.0}
        logits = out.answer_logits[valid].float()
        ce = F.cross_entropy(logits, out.answer_ids[valid], weight=self._class_weights(logits.shape[-1], logits.device))
        return {"token_ce": self.token_loss_weight * ce}

    def _class_weights(self, vocab: int, device) -> Tensor | None:
        """Per-token weights of the cross entropy: each weighted action's tokens (every slot) get its weight,
        every other token 1 (a weighted mean: a batch's weighted actions count that many times)."""
        if not self.action_weights:
            return None
        weights = torch.ones(vocab, device=device)
        names = list(self.space.names)
        for row in self._slot_ids or []:
            for name, seq in zip(names, row):
                if name in self.action_weights:
                    weights[list(seq)] = self.action_weights[name]
        return weights


def _check_prefix_free(row: list[tuple[int, ...]], texts: list[str]) -> None:
    for a, sa in enumerate(row):
        for b, sb in enumerate(row):
            if a != b and len(sa) <= len(sb) and sb[: len(sa)] == sa:
                raise ConfigError(f"action texts {texts[a]!r} and {texts[b]!r}: the tokens of one start the other's; "
                                  f"choose words that differ in their first token")

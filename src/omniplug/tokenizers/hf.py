"""Tokenizer ``hf``: any transformers tokenizer saved in a local directory."""

from __future__ import annotations

from typing import Literal

from transformers import AutoTokenizer

from omniplug.base import Tokenizer
from omniplug.weights.hf_local import local_checkpoint
from omniplug.registry import TOKENIZERS


@TOKENIZERS.register("hf")
class HFTokenizer(Tokenizer):
    """Wraps ``AutoTokenizer``. ``build.py`` adds the image placeholder and every decoder's
    trigger tokens as special tokens; user text is encoded with ``split_special_tokens`` so a
    typed ``<seg>`` can never trigger a decoder."""

    def __init__(self, *, model_name_or_path: str, padding_side: Literal["left", "right"] = "right",
                 model_max_length: int | None = None, extra_special_tokens: list[str] | None = None,
                 add_bos: bool = True) -> None:
        path = local_checkpoint(model_name_or_path, what="tokenizer hf", must_contain=())
        self.hf = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
        self.hf.padding_side = padding_side
        if model_max_length:
            self.hf.model_max_length = model_max_length
        if self.hf.pad_token is None:
            if self.hf.unk_token is not None:
                self.hf.pad_token = self.hf.unk_token
            elif self.hf.eos_token is not None:
                self.hf.pad_token = self.hf.eos_token
            else:
                self.hf.add_special_tokens({"pad_token": "<pad>"})
        self.add_bos = add_bos
        self._added: list[str] = []
        if extra_special_tokens:
            self.add_special_tokens(list(extra_special_tokens))

    def add_special_tokens(self, tokens: list[str]) -> list[int]:
        new = [t for t in tokens if t not in self.hf.get_vocab()]
        if new:
            self.hf.add_special_tokens({"additional_special_tokens": new}, replace_extra_special_tokens=False)
        for t in tokens:
            if t not in self._added:
                self._added.append(t)
        return [self.token_id(t) for t in tokens]

    def encode(self, text: str, *, special: bool) -> list[int]:
        return self.hf(text, add_special_tokens=False, split_special_tokens=not special)["input_ids"]

    def decode(self, ids: list[int], *, skip_special: bool = False) -> str:
        return self.hf.decode(ids, skip_special_tokens=skip_special)

    def token_id(self, token: str) -> int:
        tid = self.hf.convert_tokens_to_ids(token)
        if tid is None or (tid == self.hf.unk_token_id and token != self.hf.unk_token):
            raise KeyError(f"token {token!r} is not in the tokenizer's vocabulary")
        return int(tid)

    def __len__(self) -> int:
        return len(self.hf)

    @property
    def pad_id(self) -> int:
        return int(self.hf.pad_token_id)

    @property
    def eos_id(self) -> int | None:
        return self.hf.eos_token_id

    @property
    def bos_id(self) -> int | None:
        return self.hf.bos_token_id if self.add_bos else None

    @property
    def special_tokens(self) -> list[str]:
        return list(self._added)

    def save(self, directory: str) -> None:
        self.hf.save_pretrained(directory)

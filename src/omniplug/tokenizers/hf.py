"""Tokenizer ``hf``: any transformers tokenizer saved in a local directory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from transformers import AutoTokenizer

from omniplug.base import Tokenizer
from omniplug.weights.hf_local import building_on_meta, local_checkpoint
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
        if building_on_meta() and not _has_tokenizer_files(path):
            self.hf = PlannedVocabulary.from_config(path)  # planning a model from config files alone
        else:
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


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")


def _has_tokenizer_files(path: Path) -> bool:
    return any((path / name).is_file() for name in _TOKENIZER_FILES)


class PlannedVocabulary:
    """``omniplug inspect --meta`` on a folder with only ``config.json``: a vocabulary of the LLM config's
    ``vocab_size`` (ids only, no text) to which the task tokens are added, so the planned embedding has its real
    size. It cannot encode or decode text."""

    padding_side = "right"
    model_max_length = 0

    def __init__(self, size: int, *, pad: int | None, bos: int | None, eos: int | None) -> None:
        self.size, self.added = size, {}
        self.pad_token_id, self.bos_token_id, self.eos_token_id = pad if pad is not None else 0, bos, eos
        self.pad_token = self.unk_token = self.eos_token = "<planned>"
        self.unk_token_id = None

    @classmethod
    def from_config(cls, path: Path) -> "PlannedVocabulary":
        config: dict[str, Any] = json.loads((path / "config.json").read_text())
        text = config.get("text_config", config)  # a LLaVA folder keeps the LLM's config inside
        size = text.get("vocab_size") or config.get("vocab_size")
        if not size:
            raise ValueError(f"tokenizer hf: {path} has no tokenizer files and its config.json no vocab_size to plan with")
        return cls(int(size), pad=text.get("pad_token_id"), bos=text.get("bos_token_id"), eos=text.get("eos_token_id"))

    def get_vocab(self) -> dict[str, int]:
        return dict(self.added)

    def add_special_tokens(self, tokens: dict[str, list[str]], **_: Any) -> int:
        for token in tokens.get("additional_special_tokens", []):
            self.added.setdefault(token, self.size + len(self.added))
        return len(tokens.get("additional_special_tokens", []))

    def convert_tokens_to_ids(self, token: str) -> int | None:
        return self.added.get(token)

    def __len__(self) -> int:
        return self.size + len(self.added)

    def __call__(self, *args: Any, **kwargs: Any):
        raise ValueError("a planned vocabulary (inspect --meta without tokenizer files) cannot encode text")

    decode = save_pretrained = __call__

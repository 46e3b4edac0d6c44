"""Plugins defined in a test module for the training tests, used through the out-of-tree path
``type: tests.test_train_plugins:PhraseDataset`` (subprocesses run from the repository root),
plus the YAML that puts them on the tiny Llama.

* ``PhraseDataset``: text-only conversations whose answer is a fixed phrase; with ``trigger`` the
  answer ends with ``<tst>`` and the sample carries one scalar target for it.
* ``ScalarDecoder``: ``<tst>`` hidden state -> one number, MSE loss; ``nan_on_calls`` makes the
  loss NaN on chosen calls of ``loss()`` (1-based) to test the non-finite skip.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from omniplug.base import Decoder
from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.types import DecoderInput, DecoderOutput

QUESTIONS = ["what is in the image?", "describe this scene in one sentence", "how many are there?",
             "what is left of the house?"]


class PhraseDataset(Dataset):
    def __init__(self, *, size: int = 16, phrase: str = "the red circle is next to the blue square",
                 trigger: bool = False, split: str = "train") -> None:
        self.size, self.phrase, self.trigger, self.split = size, phrase, trigger, split

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Sample:
        answer = self.phrase + (" <tst>." if self.trigger else ".")
        targets = {"tst": [float(i % 3) - 1.0]} if self.trigger else {}
        return Sample(turns=[Turn(role="user", text=QUESTIONS[i % len(QUESTIONS)]), Turn(role="assistant", text=answer)],
                      targets=targets, meta={"id": f"{self.split}-{i}", "trigger": self.trigger})


@dataclass
class ScalarOutput(DecoderOutput):
    value: Tensor  # (M,)


class ScalarDecoder(Decoder):
    default_task = "tst"
    default_token = "<tst>"
    output_kind = "extra"

    def __init__(self, *, prompt_dim: int = 32, token: str = "<tst>", nan_on_calls: list[int] | None = None,
                 freeze: bool = False) -> None:
        super().__init__()
        self.tokens, self.prompt_dim, self.freeze = [token], prompt_dim, freeze
        self.head = nn.Sequential(nn.Linear(prompt_dim, 16), nn.Tanh(), nn.Linear(16, 1))
        self.nan_on_calls = set(nan_on_calls or [])
        self.calls = 0

    def forward(self, inp: DecoderInput) -> ScalarOutput:
        return ScalarOutput(batch_index=inp.batch_index, value=self.head(inp.prompts[:, 0]).squeeze(-1))

    def prepare_target(self, target, image) -> Tensor:
        return torch.tensor(float(target))

    def loss(self, out: ScalarOutput, targets: list) -> dict[str, Tensor]:
        self.calls += 1
        loss = F.mse_loss(out.value, torch.stack(list(targets)).to(out.value))
        if self.calls in self.nan_on_calls:
            loss = loss * float("nan")
        return {"mse": loss}

    def postprocess(self, out: ScalarOutput, inp: DecoderInput) -> list[float]:
        return out.value.tolist()


CONFIG = """\
includes: [{tiny}/catalogue.yaml]
decoder:
  scalar: {{type: "{module}:ScalarDecoder", nan_on_calls: {nan}}}
dataset:
  phrase: {{type: "{module}:PhraseDataset", size: 12}}
  phrase_tst: {{type: "{module}:PhraseDataset", size: 10, trigger: true}}
  phrase_val: {{type: "{module}:PhraseDataset", size: 5, trigger: true, split: val}}
one_model:
  tokenizer: tiny_tok
  llm: tiny_llama
  out_projector: out_mlp
  decoder: scalar
  conv_type: plain
  train_mode: 1
trainer:
  lr_sched: linear_warmup_cosine_lr
  init_lr: 0.003
  min_lr: 0.0003
  warmup_lr: 0.0001
  warmup_steps: 2
  max_epoch: 2
  iters_per_epoch: 4
  batch_size_train: 2
  output_dir: {out}
  log_every: 1
  seed: 7
data:
  train: {{phrase: 1, phrase_tst: 1}}
  max_length: 64
"""


def write_config(tiny_dir: Path, directory: Path, *, out: Path, nan_on_calls: list[int] | None = None,
                 extra: str = "") -> Path:
    path = directory / "train.yaml"
    path.write_text(CONFIG.format(module=__name__, tiny=tiny_dir, out=out, nan=list(nan_on_calls or [])) + extra)
    return path


def test_plugins_follow_the_contracts(tiny_dir, tmp_path):
    from omniplug.build import build_model
    from omniplug.data.collate import Collator

    model = build_model(write_config(tiny_dir, tmp_path, out=tmp_path / "out"))
    ds = PhraseDataset(size=3, trigger=True)
    batch = Collator(model, max_length=64)([ds[0], ds[1], ds[2]])
    out = model(batch)
    assert set(out.decoder_losses) == {"tst/mse"} and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.decoders["tst"].head[0].weight.grad is not None

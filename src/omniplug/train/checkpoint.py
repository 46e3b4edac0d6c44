"""Training checkpoints: ``output_dir/checkpoints/step_000123/``, written atomically.

A checkpoint directory holds

* ``trainable.safetensors`` + ``config.yaml`` (``omniplug.weights.save_trainable``; loadable
  by ``one_model.weights`` and ``omniplug infer``),
* ``optimizer.pt`` (the optimizer's state dict: tensors and plain values only),
* ``rng_rank{r}.pt`` for every rank (python, numpy, torch and CUDA generator states),
* ``deepspeed/`` or ``fsdp/optimizer_0/`` instead of ``optimizer.pt`` under ZeRO / FSDP: the optimizer state
  sharded, one file per rank, in the engine's own format (written and read by the training loop),
* ``trainer_state.json`` (step, epoch, data position, skip counters, schedule),
* ``COMPLETE``, written last.

Everything is written into ``.tmp_step_000123``, fsynced, then renamed; a directory without
``COMPLETE`` is never loaded. Everything loaded back goes through ``torch.load(weights_only=True)``
or safetensors.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from omniplug.config.schema import ConfigError
from omniplug.weights import load_trainable, save_trainable

MARKER = "COMPLETE"
STATE_NAME = "trainer_state.json"
OPTIMIZER_NAME = "optimizer.pt"
_STEP_DIR = re.compile(r"^step_(\d+)$")


@dataclass
class TrainState:
    """Everything besides tensors that a resumed run needs to continue exactly."""

    step: int = 0  # optimizer steps done (skipped steps included)
    position: int = 0  # draws consumed from the mixture stream (all ranks together)
    skipped: int = 0  # steps skipped for a non-finite loss, in total
    nonfinite_in_row: int = 0
    world_size: int = 1
    lr_sched: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        data = json.loads(text)
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def is_complete(path: Path) -> bool:
    return (path / MARKER).is_file()


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and child.is_dir() and is_complete(child):
            found.append((int(match.group(1)), child))
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """``None`` -> fresh start; ``"auto"`` -> newest complete checkpoint (or fresh); a path -> it."""
    if resume is None:
        return None
    if resume == "auto":
        done = complete_checkpoints(output_dir)
        return done[-1] if done else None
    path = Path(resume).expanduser()
    if not path.is_dir():
        raise ConfigError(f"trainer.resume_ckpt_path: {path} is not a directory (give a checkpoints/step_* dir, or 'auto')")
    if not is_complete(path):
        raise ConfigError(f"trainer.resume_ckpt_path: {path} has no {MARKER} marker: the write was interrupted; "
                          f"pick an older checkpoint or use 'auto'")
    return path


# --- random generators ------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- writing ----------------------------------------------------------------------------------------
def _fsync_tree(path: Path) -> None:
    for file in sorted(path.rglob("*")):
        if file.is_file():
            with open(file, "rb") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class CheckpointWriter:
    """Writes a checkpoint from every rank: call :meth:`begin`, :meth:`write_rank` on every rank,
    :meth:`finish` on rank 0, with barriers between (see ``loop.save_checkpoint``)."""

    def __init__(self, output_dir: str | Path, step: int) -> None:
        self.root = checkpoints_dir(output_dir)
        self.final = self.root / step_dir_name(step)
        self.tmp = self.root / f".tmp_{step_dir_name(step)}"

    def begin(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()

    def write_rank(self, rank: int) -> None:
        torch.save(rng_state(), self.tmp / f"rng_rank{rank}.pt")

    def finish(self, *, model, optimizer_state: dict[str, Any] | None, state: TrainState, keep_last: int,
               weights: dict[str, Any] | None = None) -> Path:
        save_trainable(model, self.tmp, state=weights)
        if optimizer_state is not None:
            torch.save(optimizer_state, self.tmp / OPTIMIZER_NAME)
        (self.tmp / STATE_NAME).write_text(state.to_json())
        (self.tmp / MARKER).write_text(json.dumps({"step": state.step}) + "\n")
        _fsync_tree(self.tmp)
        if self.final.exists():  # same step written again (e.g. a resumed run): replace it
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        _fsync_dir(self.root)
        prune(self.root.parent, keep_last=keep_last)
        return self.final


def prune(output_dir: str | Path, *, keep_last: int) -> None:
    """Keep the newest ``keep_last`` complete checkpoints; drop leftovers of interrupted writes."""
    for stale in checkpoints_dir(output_dir).glob(".tmp_step_*"):  # only rank 0 prunes, between barriers
        shutil.rmtree(stale, ignore_errors=True)
    if keep_last < 1:
        return
    for old in complete_checkpoints(output_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


# --- reading ----------------------------------------------------------------------------------------
def load_state(path: Path) -> TrainState:
    return TrainState.from_json((path / STATE_NAME).read_text())


def load_weights(model, path: Path) -> None:
    load_trainable(model, path)


def load_optimizer_state(path: Path) -> dict[str, Any] | None:
    file = path / OPTIMIZER_NAME
    return torch.load(file, weights_only=True, map_location="cpu") if file.is_file() else None


def load_rng(path: Path, rank: int) -> bool:
    """Restore this rank's generators; False when the checkpoint has none for this rank."""
    file = path / f"rng_rank{rank}.pt"
    if not file.is_file():
        return False
    set_rng_state(torch.load(file, weights_only=True))
    return True

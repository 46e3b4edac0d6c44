"""Saving and loading the trainable weights of a OneModel (safetensors + resolved config)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from omniplug.config.schema import ConfigError

WEIGHTS_NAME = "trainable.safetensors"
CONFIG_NAME = "config.yaml"


def trainable_state_dict(model) -> dict[str, Tensor]:
    """Trainable parameters, plus the decoders' persistent buffers: state that belongs with the trained
    weights although no optimizer updates it (e.g. action normalisation statistics, a fitted codebook)."""
    state = {name: p.detach().contiguous() for name, p in model.named_parameters() if p.requires_grad}
    decoders = getattr(model, "decoders", None)
    if decoders is not None:
        for mod_name, mod in decoders.named_modules(prefix="decoders"):
            for name, buf in mod.named_buffers(recurse=False):
                if buf is not None and name not in mod._non_persistent_buffers_set:
                    state[f"{mod_name}.{name}"] = buf.detach().contiguous()
    return state


def save_trainable(model, directory: str | Path, *, state: dict[str, Tensor] | None = None) -> Path:
    """Write ``trainable.safetensors`` and the resolved ``config.yaml`` into ``directory``. ``state``: the
    trainable tensors when they were gathered already (a sharded model); default ``trainable_state_dict(model)``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in (trainable_state_dict(model) if state is None else state).items()}
    tmp = directory / (WEIGHTS_NAME + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt", "omniplug": "trainable"})
    os.replace(tmp, directory / WEIGHTS_NAME)
    config = getattr(model, "config", None)
    if config is not None:
        config.save(directory / CONFIG_NAME)
    return directory / WEIGHTS_NAME


def _read_state(file: Path) -> tuple[dict[str, Tensor], str | None]:
    try:
        state = load_file(str(file))
        with safe_open(str(file), "pt") as fh:
            kind = (fh.metadata() or {}).get("omniplug")
    except Exception as exc:
        raise ConfigError(f"cannot read weights {file}: {exc}") from None
    return state, kind


def _weights_file(path: str | Path) -> Path:
    path = Path(path).expanduser()
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"weights not found: {file} (expected a {WEIGHTS_NAME} written by omniplug train)")
    return file


@dataclass(frozen=True)
class InitReport:
    """What :func:`init_from` took from another model's weights."""

    loaded: int  # tensors copied whole
    grown: list[str]  # embedding-like tensors whose leading rows were copied (the model added tokens)
    new: list[str]  # trainable tensors of this model the file lacks: they keep their initialisation
    ignored: list[str]  # tensors of the file this model has not, or has with another shape

    def summary(self) -> str:
        def few(names: list[str]) -> str:
            return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")

        text = f"{self.loaded} tensors loaded"
        if self.grown:
            text += f"; {len(self.grown)} grown by new token rows ({few(self.grown)})"
        if self.new:
            text += f"; {len(self.new)} new, left as initialised ({few(self.new)})"
        if self.ignored:
            text += f"; {len(self.ignored)} of the file unused ({few(self.ignored)})"
        return text


def init_from(model, path: str | Path) -> InitReport:
    """Start from another model's trained weights (``one_model.init_weights``): every tensor of the file whose
    name and shape this model has is copied; a 2-D tensor whose rows this model extends (the token embedding and
    LM head after new special tokens, appended after the old ones) gets its leading rows; the rest (a decoder
    this model adds) keeps its initialisation. Raises when nothing fits: the file is for another architecture."""
    import torch

    file = _weights_file(path)
    state, kind = _read_state(file)
    if kind == "export":
        raise ConfigError(f"init_weights {file}: heads of an exported model; point it at a trained run's folder")
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    loaded, grown, ignored = 0, [], []
    with torch.no_grad():
        for name, value in state.items():
            target = params.get(name)
            if target is None:
                ignored.append(name)
            elif tuple(target.shape) == tuple(value.shape):
                target.copy_(value.to(target.dtype))
                loaded += 1
            elif value.dim() == 2 and value.shape[1:] == target.shape[1:] and value.shape[0] < target.shape[0]:
                target[: value.shape[0]].copy_(value.to(target.dtype))
                grown.append(name)
            else:
                ignored.append(name)
    if not loaded:
        raise ConfigError(f"init_weights {file}: no tensor fits this model (names or shapes all differ); "
                          f"was it trained with the same encoder, LLM and decoders?")
    new = sorted(set(trainable_state_dict(model)) - set(state))
    return InitReport(loaded=loaded, grown=grown, new=new, ignored=ignored)


def load_trainable(model, path: str | Path) -> None:
    """Load weights saved by ``save_trainable`` (a directory or the .safetensors file itself).
    Every trainable parameter must be present with the same shape."""
    file = _weights_file(path)
    state, kind = _read_state(file)
    if kind == "export":  # heads.safetensors of `omniplug export`: the rest comes from the exported folders
        from omniplug.weights.export import load_heads

        load_heads(model, state, file)
        return
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    own = trainable_state_dict(model)
    missing = sorted(set(own) - set(state))
    unknown = sorted(set(state) - set(params))
    if missing or unknown:
        raise ConfigError(
            f"weights {file} do not fit this model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unknown {unknown[:5]}{'...' if len(unknown) > 5 else ''}; was it trained with the same config and train_mode?"
        )
    for name, value in state.items():
        target = params[name]
        if tuple(target.shape) != tuple(value.shape):
            raise ConfigError(f"weights {file}: tensor {name} has shape {tuple(value.shape)}, the model has {tuple(target.shape)}")
        with __import__("torch").no_grad():
            target.copy_(value.to(target.dtype))


def save_half(source: str | Path, directory: str | Path) -> Path:
    """Copy trained weights (``source``: a run's folder or its ``trainable.safetensors``) into ``directory`` with
    every float32 tensor stored as float16 — half the bytes of a shipped model; ``load_trainable`` casts back to
    the model's dtype."""
    import torch

    file = _weights_file(source)
    state, kind = _read_state(file)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    half = {k: v.to(torch.float16) if v.dtype == torch.float32 else v for k, v in state.items()}
    save_file(half, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "omniplug": kind or "trainable"})
    return directory / WEIGHTS_NAME


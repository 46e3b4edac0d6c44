"""Saving and loading the trainable weights of a OneModel (safetensors + resolved config)."""

from __future__ import annotations

import os
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


def load_trainable(model, path: str | Path) -> None:
    """Load weights saved by ``save_trainable`` (a directory or the .safetensors file itself).
    Every trainable parameter must be present with the same shape."""
    path = Path(path).expanduser()
    file = path / WEIGHTS_NAME if path.is_dir() else path
    if not file.is_file():
        raise ConfigError(f"weights not found: {file} (expected a {WEIGHTS_NAME} written by omniplug train)")
    try:
        state = load_file(str(file))
        with safe_open(str(file), "pt") as fh:
            kind = (fh.metadata() or {}).get("omniplug")
    except Exception as exc:
        raise ConfigError(f"cannot read weights {file}: {exc}") from None
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

"""Reading projector weight files safely (LLaVA ``mm_projector.bin`` / ``.pt`` or safetensors)."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from omniplug.config.schema import ConfigError


def read_state_dict(path: str | Path, *, what: str) -> dict[str, Tensor] | None:
    """The tensors of a projector file; ``None`` while planning on the meta device (no weights are read)."""
    from omniplug.weights.hf_local import building_on_meta

    if building_on_meta():
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"{what}: ckpt_path not found: {p}")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{what}: refusing to load {p}: it is not a plain tensor file ({str(exc).splitlines()[0]}). "
            f"omniplug only loads weights with torch.load(weights_only=True) or safetensors; convert the file to safetensors"
        ) from None
    except Exception as exc:  # corrupt or foreign file
        raise ConfigError(f"{what}: cannot read {p}: {exc}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ConfigError(f"{what}: {p} does not hold a flat name -> tensor mapping")
    return state


def load_into(module: nn.Module, state: dict[str, Tensor] | None, *, prefix_marker: str, what: str, source: str) -> None:
    """Load ``state`` into ``module`` after stripping everything up to ``prefix_marker``
    (e.g. ``model.mm_projector.0.weight`` -> ``0.weight``). Shape mismatches name the tensor. ``None``: nothing."""
    if state is None:
        return
    cleaned: dict[str, Tensor] = {}
    for key, value in state.items():
        short = key.split(prefix_marker, 1)[1] if prefix_marker in key else key
        cleaned[short] = value
    own = module.state_dict()
    missing = sorted(set(own) - set(cleaned))
    unexpected = sorted(set(cleaned) - set(own))
    if missing or unexpected:
        raise ConfigError(
            f"{what}: {source} does not match the projector: missing {missing or 'none'}, unexpected {unexpected or 'none'} "
            f"(expected keys {sorted(own)})"
        )
    for key, value in cleaned.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise ConfigError(
                f"{what}: tensor {key!r} in {source} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}; "
                f"check in_features/out_features or pick the projector file made for this model size"
            )
    module.load_state_dict(cleaned)

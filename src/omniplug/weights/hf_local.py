"""Loading Hugging Face checkpoints from local directories only, safely.

* ``local_checkpoint`` fails early and clearly when a path is missing (no hub lookups).
* ``load_pretrained`` never trusts remote code and shares one loaded object between plugins
  that point at the same checkpoint while a model is being built (``shared_loads``): a LLaVA
  checkpoint used by the encoder, projector and LLM entries is read from disk once.
"""

from __future__ import annotations

import contextlib
import contextvars
from pathlib import Path
from typing import Any, Iterator

from omniplug.config.schema import ConfigError

_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("omniplug_shared_loads", default=None)
_META: contextvars.ContextVar[bool] = contextvars.ContextVar("omniplug_meta_build", default=False)


@contextlib.contextmanager
def meta_build() -> Iterator[None]:
    """Plan a model before its weights exist (``omniplug inspect --meta``): inside, checkpoints are read as their
    ``config.json`` alone and every model is built on the meta device (shapes and dtypes, no memory, no weights)."""
    import torch

    token = _META.set(True)
    try:
        with torch.device("meta"):
            yield
    finally:
        _META.reset(token)


def building_on_meta() -> bool:
    return _META.get()


def local_checkpoint(path: str | None, *, what: str, must_contain: tuple[str, ...] = ("config.json",)) -> Path:
    if not path:
        raise ConfigError(f"{what}: model_name_or_path is empty; point it at a local checkpoint directory")
    p = Path(path).expanduser()
    if not p.is_dir():
        raise ConfigError(
            f"{what}: checkpoint directory not found: {p}. omniplug loads weights from local paths only "
            f"(no hub downloads); check base_dir / model_name_or_path, or run `omniplug tiny --out DIR` for test checkpoints"
        )
    for name in must_contain:
        if not (p / name).exists():
            raise ConfigError(f"{what}: {p} is not a checkpoint directory (no {name})")
    return p


@contextlib.contextmanager
def shared_loads() -> Iterator[None]:
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def load_pretrained(cls: Any, path: Path, **kwargs: Any) -> Any:
    """``cls.from_pretrained(path)`` with remote code off, shared within ``shared_loads()``."""
    kwargs.setdefault("trust_remote_code", False) if _accepts_remote_code(cls) else None
    cache = _CACHE.get()
    key = (cls.__qualname__, str(Path(path).resolve()), tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    if cache is not None and key in cache:
        return cache[key]
    if _META.get() and _is_model_class(cls):
        obj = _on_meta(cls, Path(path), kwargs)
    else:
        obj = cls.from_pretrained(str(path), **kwargs)
    if cache is not None:
        cache[key] = obj
    return obj


def init_from_config(cls: Any, path: Path, **kwargs: Any) -> Any:
    """A randomly initialised model of ``cls`` from the ``config.json`` in ``path`` (no weights read):
    the ``from_scratch: true`` option of HF-backed plugins, for models trained from nothing (the
    global seed, set by the training loop, makes the initialisation reproducible)."""
    if cls.__name__.startswith("Auto"):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(str(path), trust_remote_code=False)
        return cls.from_config(config, **kwargs)
    return cls(cls.config_class.from_pretrained(str(path)), **kwargs)


def _is_model_class(cls: Any) -> bool:
    """transformers / diffusers model classes (what has weights); processors and tokenizers load as usual."""
    from torch import nn

    if isinstance(cls, type) and issubclass(cls, nn.Module):  # (diffusers' AutoencoderKL is one)
        return True
    return cls.__name__.startswith("AutoModel")  # transformers' Auto* factories are not modules


def _on_meta(cls: Any, path: Path, kwargs: dict[str, Any]) -> Any:
    """``from_pretrained`` without the weights: the model of ``path``'s config, on the meta device."""
    dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
    if cls.__module__.startswith("diffusers"):
        model = cls.from_config(cls.load_config(str(path))).to("meta")  # some build on the CPU regardless
    else:
        extra = {k: v for k, v in kwargs.items() if k == "attn_implementation"}
        model = init_from_config(cls, path, **extra)
    return model.to(dtype) if dtype is not None else model


def _accepts_remote_code(cls: Any) -> bool:
    return cls.__name__.startswith("Auto")


def save_folder(directory: Path, model: Any, processor: Any = None) -> None:
    """``omniplug export``: a transformers model (and its processor) as ``save_pretrained`` writes them
    (safetensors only), so that ``from_pretrained(directory)`` loads them without omniplug."""
    model.save_pretrained(str(directory))
    if processor is not None:
        processor.save_pretrained(str(directory))


def exported_entry(entry: dict[str, Any], ref: str, **changes: Any) -> dict[str, Any]:
    """The catalogue entry that loads an exported folder: ``model_name_or_path`` at it, trained weights (no
    ``from_scratch``)."""
    out = {k: v for k, v in entry.items() if k != "from_scratch"}
    return {**out, "model_name_or_path": ref, **changes}

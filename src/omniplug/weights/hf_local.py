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

"""Plugin registries: one small generic registry per plugin kind.

A plugin registers itself with a decorator at import time::

    @DECODERS.register("sam")
    class SamDecoder(Decoder): ...

Plugins outside this package are found two ways, both explicit:

* ``type: my_pkg.my_module:MyDecoder`` in YAML imports that class directly;
* a Python entry point in the group ``omniplug.plugins`` named ``<kind>.<alias>``
  (e.g. ``decoder.boxes = my_pkg.boxes:BoxDecoder``) registers ``alias`` on first lookup.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Callable, Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUP = "omniplug.plugins"


class RegistryError(KeyError):
    """An alias is unknown or registered twice."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps aliases (``"clip"``, ``"sam"``) to plugin classes of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, type[T]] = {}
        self._entry_points_loaded = False

    def register(self, alias: str) -> Callable[[type[T]], type[T]]:
        if not alias or ":" in alias:
            raise RegistryError(f"invalid {self.kind} alias {alias!r}: use a short name without ':'")

        def decorator(cls: type[T]) -> type[T]:
            existing = self._entries.get(alias)
            if existing is not None and existing is not cls:
                raise RegistryError(
                    f"{self.kind} alias {alias!r} is already registered by "
                    f"{existing.__module__}.{existing.__qualname__}; pick another alias"
                )
            self._entries[alias] = cls
            cls.plugin_alias = alias  # type: ignore[attr-defined]
            return cls

        return decorator

    def get(self, alias: str) -> type[T]:
        if ":" in alias:
            return _import_object(alias, kind=self.kind)
        if alias not in self._entries:
            self._load_entry_points()
        if alias not in self._entries:
            raise RegistryError(
                f"unknown {self.kind} {alias!r}; available: {', '.join(self.names()) or '(none)'}"
                f" (or use 'package.module:ClassName' for an out-of-tree plugin)"
            )
        return self._entries[alias]

    def names(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._entries)

    def items(self) -> list[tuple[str, type[T]]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, alias: str) -> bool:
        return alias in self.names()

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            kind, _, alias = ep.name.partition(".")
            if kind != self.kind or not alias:
                continue
            cls = ep.load()
            if self._entries.get(alias) is not cls:
                self.register(alias)(cls)


def _import_object(spec: str, *, kind: str):
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RegistryError(f"cannot import {kind} plugin module {module_name!r} from {spec!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise RegistryError(f"module {module_name!r} has no attribute {attr!r} (from {kind} type {spec!r})") from None


ENCODERS: Registry = Registry("encoder")
PROJECTORS: Registry = Registry("projector")
TOKENIZERS: Registry = Registry("tokenizer")
LLMS: Registry = Registry("llm")
DECODERS: Registry = Registry("decoder")
DATASETS: Registry = Registry("dataset")

#: config section name -> registry
REGISTRIES: dict[str, Registry] = {
    "encoder": ENCODERS,
    "projector": PROJECTORS,
    "tokenizer": TOKENIZERS,
    "llm": LLMS,
    "decoder": DECODERS,
    "dataset": DATASETS,
}


def import_plugin_modules(package: str, path) -> None:
    """Import every public module of a plugin package (its ``__init__`` calls this with ``__name__, __path__``):
    a plugin is one file dropped into the package, registered on import, listed nowhere else."""
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if not info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")


def load_builtin_plugins() -> None:
    """Import every built-in plugin package so that its modules register themselves."""
    for package in ("encoders", "projectors", "tokenizers", "llms", "decoders", "data"):
        importlib.import_module(f"omniplug.{package}")

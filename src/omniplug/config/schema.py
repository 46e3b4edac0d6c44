"""Signature-as-schema: check a mapping of YAML values against a callable's keyword arguments.

Plugin constructors are keyword-only and typed; their signatures are the config schema. This
module turns a signature into accepted keys, required keys and type checks, with error messages
that name where the value came from.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """A configuration problem the user must fix; the message says where and how."""


@dataclasses.dataclass(frozen=True)
class Param:
    name: str
    annotation: Any
    required: bool
    default: Any


def signature_params(target: Callable | type) -> dict[str, Param]:
    """Keyword parameters accepted by ``target`` (a class's ``__init__`` or a dataclass)."""
    func = target.__init__ if isinstance(target, type) else target
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable forward refs: fall back to "any type"
        hints = {}
    params: dict[str, Param] = {}
    for p in inspect.signature(func).parameters.values():
        if p.name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        params[p.name] = Param(
            name=p.name,
            annotation=hints.get(p.name, Any),
            required=p.default is inspect.Parameter.empty,
            default=None if p.default is inspect.Parameter.empty else p.default,
        )
    return params


def type_name(annotation: Any) -> str:
    if annotation is Any:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def matches(value: Any, annotation: Any) -> bool:
    """True when a YAML value fits ``annotation`` (ints are accepted where floats are)."""
    if annotation is Any or annotation is inspect.Parameter.empty:
        return True
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if annotation is type(None) or annotation is None:
        return value is None
    if origin is Literal:
        return value in args
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, typing.Sequence) or annotation in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(args) == len(value) and all(matches(v, a) for v, a in zip(value, args))
        inner = args[0] if args else Any
        return all(matches(v, inner) for v in value)
    if origin in (dict, typing.Mapping) or annotation is dict:
        if not isinstance(value, dict):
            return False
        kt, vt = args if args else (Any, Any)
        return all(matches(k, kt) and matches(v, vt) for k, v in value.items())
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def check_kwargs(target: Callable | type, values: dict[str, Any], *, where: str,
                 supplied: frozenset[str] = frozenset()) -> None:
    """Raise ConfigError for unknown keys, missing required keys or values of the wrong type.

    ``supplied`` names parameters that omniplug fills in itself (they may be absent from YAML).
    """
    params = signature_params(target)
    accepted = ", ".join(sorted(params)) or "(none)"
    for key, value in values.items():
        if key not in params:
            hint = _close_match(key, params)
            raise ConfigError(
                f"{where}: unknown key {key!r}{hint}; accepted keys: {accepted}"
            )
        ann = params[key].annotation
        if not matches(value, ann):
            raise ConfigError(
                f"{where}: key {key!r} must be {type_name(ann)}, got {type(value).__name__} {value!r}"
            )
    missing = [n for n, p in params.items() if p.required and n not in values and n not in supplied]
    if missing:
        raise ConfigError(f"{where}: missing required key(s) {', '.join(missing)}; accepted keys: {accepted}")


def _close_match(key: str, params: dict[str, Param]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(params), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""

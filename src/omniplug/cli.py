"""omniplug command line: plugins | tiny (+ the commands of ``omniplug.commands``: train, eval, infer, inspect, ...)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from omniplug.config.schema import ConfigError

#: name -> (help, add_arguments(parser), run(args) -> int); features register their commands here
COMMANDS: dict[str, tuple[str, Callable, Callable]] = {}


def command(name: str, help: str):
    def decorator(add_arguments: Callable) -> Callable:
        def register(run: Callable) -> Callable:
            COMMANDS[name] = (help, add_arguments, run)
            return run

        return register

    return decorator


def _quiet_libraries() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# --- plugins --------------------------------------------------------------------------------------
def _plugins_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")


@command("plugins", "list registered plugins by kind")(_plugins_args)
def _plugins(args: argparse.Namespace) -> int:
    from omniplug.registry import REGISTRIES, load_builtin_plugins

    load_builtin_plugins()
    table = {kind: {name: f"{cls.__module__}:{cls.__qualname__}" for name, cls in reg.items()}
             for kind, reg in REGISTRIES.items()}
    if args.json:
        print(json.dumps(table, indent=2))
    else:
        for kind, entries in table.items():
            print(f"{kind}:")
            for name, where in entries.items() or [("(none)", "")]:
                print(f"  {name:<16} {where}")
    return 0


# --- tiny -----------------------------------------------------------------------------------------
def _tiny_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="directory to write tiny checkpoints and configs into")


@command("tiny", "write tiny random checkpoints of every supported family plus ready configs")(_tiny_args)
def _tiny(args: argparse.Namespace) -> int:
    from omniplug.fixtures.tiny import write_all

    paths = write_all(args.out)
    for name, path in paths.items():
        print(f"{name:<14} {path}")
    return 0


def _load_feature_commands() -> None:
    """Feature packages add their commands by importing ``command`` from here."""
    import importlib

    for module in ("omniplug.commands",):
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def build_parser() -> argparse.ArgumentParser:
    _load_feature_commands()
    parser = argparse.ArgumentParser(prog="omniplug", description="plugin-based multimodal LLM framework")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, add_arguments, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_arguments(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except ConfigError as exc:
        print(f"omniplug {args.command}: config error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as exc:
        print(f"omniplug {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # run as `python -m omniplug.cli`: this file is __main__, while feature commands register with the
    # module omniplug.cli, so hand over to that module's main (or `eval`, `train`, ... would be missing)
    from omniplug.cli import main as _main

    sys.exit(_main())

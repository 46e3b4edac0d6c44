"""``omniplug train -c CONFIG [key=value ...]``: train, or evaluate only with ``trainer.evaluate=true``.

Multi-process: ``accelerate launch --multi_gpu --num_processes N $(which omniplug) train -c CONFIG``
(see docs/training.md)."""

from __future__ import annotations

import argparse
import sys

from omniplug.cli import command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. trainer.init_lr=2e-5 trainer.output_dir=out/x")
    p.add_argument("--stop-after", type=int, default=None, metavar="STEPS",
                   help="stop after this many optimizer steps in total, as an interruption would (resumable)")


@command("train", "train a model from a config (trainer.evaluate=true: evaluate only)")(_args)
def _run(args: argparse.Namespace) -> int:
    from omniplug.config import load_config

    config = load_config(args.config, args.overrides)
    if config.trainer.evaluate:
        from omniplug.train.evaluate import run_evaluation

        run_evaluation(config)
        return 0
    from omniplug.train import ExpectationError, NonFiniteLossError, train

    try:
        train(config, stop_after_steps=args.stop_after)
    except (NonFiniteLossError, ExpectationError) as exc:
        print(f"omniplug train: {exc}", file=sys.stderr)
        return 1
    return 0

"""``omniplug export -c CONFIG [one_model.weights=RUN] --out DIR [--merge-lora | --adapter-only] [--overwrite]``.

Writes the trained model as standard folders (transformers / diffusers / peft / safetensors) plus an
``omniplug.yaml`` that loads them back as they are; see ``omniplug.weights.export`` for the layout and docs/export.md
for the round trip.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from omniplug.cli import command

_QUANT_KEYS = ("bits", "load_in_8bit")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config the model was trained with")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. one_model.weights=output/run1")
    p.add_argument("--out", required=True, metavar="DIR", help="export folder (must be new or empty)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--merge-lora", action="store_true",
                      help="merge the LLM's LoRA (and trained token rows) into its weights")
    mode.add_argument("--adapter-only", action="store_true",
                      help="only the peft adapter and the trained non-LLM parts, for a base others already have")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")


@command("export", "write a trained model as transformers/diffusers/peft folders plus a config that reloads them")(_args)
def _run(args: argparse.Namespace) -> int:
    from omniplug.build import build_model
    from omniplug.config import load_config
    from omniplug.weights.export import export_model
    from omniplug.weights.trainable import CONFIG_NAME, WEIGHTS_NAME

    config = load_config(args.config, args.overrides)
    weights = config.one_model.weights
    if weights:
        path = Path(weights)
        if not (path / WEIGHTS_NAME).is_file() and not (path.is_file() and path.suffix == ".safetensors"):
            raise ValueError(f"export: one_model.weights={weights} is not a run folder with {WEIGHTS_NAME} (nor such a "
                             f"file); point it at `trainer.output_dir` of a finished `omniplug train`, or set it to null "
                             f"to export the untrained model")
    llm_entry = config.entry("llm", config.one_model.llm, where="one_model.llm")
    quant = {k: llm_entry.params[k] for k in _QUANT_KEYS if llm_entry.params.get(k)}
    if quant:  # the weights leave in full precision; the exported config quantises on load as this one does
        strip = [f"llm.{llm_entry.name}.{k}={'null' if k == 'bits' else 'false'}" for k in quant]
        config = load_config(args.config, [*args.overrides, *strip])
    model = build_model(config)
    mode = "merge" if args.merge_lora else "adapter_only" if args.adapter_only else "adapter"
    training = None
    if weights:
        run = Path(weights) if Path(weights).is_dir() else Path(weights).parent
        training = run / CONFIG_NAME
    result = export_model(model, config, args.out, mode=mode, overwrite=args.overwrite, source=str(config.source),
                          weights=weights, training_config=training, quant_params=quant)
    print(f"exported ({mode}) to {result.directory}")
    for prefix, folder in result.folders.items():
        print(f"  {folder + '/':<22} {prefix}")
    print(f"  heads.safetensors      {len(result.heads)} tensors")
    print(f"load it: omniplug serve -c {result.directory / 'omniplug.yaml'}")
    return 0

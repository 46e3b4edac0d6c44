"""``omniplug inspect -c CONFIG [key=value ...] [--json] [--meta [--gpus N]]``: build a model offline and summarise
its modules. ``--meta`` plans a model before its weights exist: every checkpoint is read as its ``config.json`` alone
(a folder with only that file will do) and built on the meta device, and the memory that training (per DeepSpeed
ZeRO stage) and inference (fp16 / int8 / int4) will need for weights, gradients and optimizer state is estimated."""

from __future__ import annotations

import argparse
import json
from typing import Any

from omniplug.base import count_params, module_dtype
from omniplug.cli import command


def describe(model) -> dict[str, Any]:
    config = getattr(model, "config", None)
    om = config.one_model if config is not None else None
    modules: dict[str, dict[str, Any]] = {}

    def add(role: str, module, entry_name: str | None, section: str) -> None:
        if module is None:
            return
        params, trainable = count_params(module) if hasattr(module, "parameters") else (0, 0)
        entry = config.catalogues[section].get(entry_name) if config is not None and entry_name else None
        modules[role] = {
            "entry": entry_name,
            "type": entry.type if entry else getattr(module, "plugin_alias", type(module).__name__),
            "class": f"{type(module).__module__}.{type(module).__qualname__}",
            "params": params,
            "trainable_params": trainable,
            "dtype": module_dtype(module) if hasattr(module, "parameters") else "none",
        }

    add("encoder", model.encoder, om.encoder if om else None, "encoder")
    add("in_projector", model.in_projector, om.in_projector if om else None, "projector")
    tok = model.tokenizer
    modules["tokenizer"] = {
        "entry": om.tokenizer if om else None,
        "type": config.catalogues["tokenizer"][om.tokenizer].type if om else getattr(tok, "plugin_alias", "?"),
        "class": f"{type(tok.hf).__module__}.{type(tok.hf).__qualname__}" if hasattr(tok, "hf") else type(tok).__name__,
        "params": 0, "trainable_params": 0, "dtype": "none", "vocab_size": len(tok),
        "special_tokens": tok.special_tokens,
    }
    add("llm", model.llm, om.llm if om else None, "llm")
    modules["llm"]["hidden_size"] = model.llm.hidden_size
    modules["llm"]["hf_class"] = type(_unwrap(model.llm.model)).__name__
    for task, proj in model.out_projectors.items():
        entry = config.out_projector_entry(task).name if config is not None else None
        add(f"out_projector.{task}", proj, entry, "projector")
    for task, dec in model.decoders.items():
        entry = config.decoder_entries()[task].name if config is not None else None
        add(f"decoder.{task}", dec, entry, "decoder")
        modules[f"decoder.{task}"]["tokens"] = list(dec.tokens)
    if model.encoder is not None:
        modules["encoder"]["out_dim"] = model.encoder.out_dim
        modules["encoder"]["tokens_per_image"] = model.encoder.num_tokens
    if model.in_projector is not None:
        modules["in_projector"]["shape"] = [model.in_projector.in_features, model.in_projector.out_features]
    total, trainable = count_params(model)
    return {
        "config": config.source if config is not None else None,
        "train_mode": om.train_mode if om else None,
        "modules": modules,
        "total_params": total,
        "trainable_params": trainable,
    }


GiB = 2 ** 30


def memory_plan(model, *, gpus: int = 8) -> dict[str, Any]:
    """Bytes for weights, gradients and Adam state, from the built model's parameters (no activations, no
    buffers, no framework overhead — a floor, not a promise).

    Training with AdamW in mixed precision: each trainable parameter has a gradient in its own dtype, two fp32
    moments and, when it is not fp32, an fp32 master copy. ZeRO-1 shards the optimizer state (moments + master) over
    ``gpus``, ZeRO-2 also the gradients, ZeRO-3 also the weights; FSDP full sharding is ZeRO-3's figure.
    Inference: every module at 2 bytes a parameter (fp16/bf16), and the LLM at 1 (int8) or 0.5 (int4)."""
    seen: set[int] = set()
    weights = grads = optim = 0
    llm_params = other_params = 0
    llm_ids = {id(p) for p in model.llm.parameters()}
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        size = p.element_size()
        weights += p.numel() * size
        if id(p) in llm_ids:
            llm_params += p.numel()
        else:
            other_params += p.numel()
        if p.requires_grad:
            grads += p.numel() * size
            optim += p.numel() * (8 + (0 if p.dtype.is_floating_point and size == 4 else 4))
    zero = {
        "zero0": weights + grads + optim,
        "zero1": weights + grads + optim / gpus,
        "zero2": weights + (grads + optim) / gpus,
        "zero3": (weights + grads + optim) / gpus,
    }
    inference = {"fp16": 2 * (llm_params + other_params), "int8": llm_params + 2 * other_params,
                 "int4": llm_params / 2 + 2 * other_params}
    return {"gpus": gpus, "weights_bytes": weights, "grad_bytes": grads, "optimizer_bytes": optim,
            "train_per_gpu_bytes": zero, "inference_bytes": inference,
            "note": "weights + gradients + AdamW state only; activations, buffers and framework overhead come on top"}


def format_memory(plan: dict[str, Any]) -> str:
    z, inf = plan["train_per_gpu_bytes"], plan["inference_bytes"]
    g = plan["gpus"]
    return "\n".join([
        f"memory plan ({plan['note']}):",
        f"  weights {plan['weights_bytes'] / GiB:.2f} GiB as built, gradients {plan['grad_bytes'] / GiB:.2f} GiB, "
        f"AdamW state {plan['optimizer_bytes'] / GiB:.2f} GiB",
        f"  training, per GPU of {g}: DDP / ZeRO-0 {z['zero0'] / GiB:.2f} GiB, ZeRO-1 {z['zero1'] / GiB:.2f}, "
        f"ZeRO-2 {z['zero2'] / GiB:.2f}, ZeRO-3 / FSDP {z['zero3'] / GiB:.2f}",
        f"  inference weights: fp16 {inf['fp16'] / GiB:.2f} GiB, LLM int8 {inf['int8'] / GiB:.2f}, "
        f"LLM int4 {inf['int4'] / GiB:.2f}",
    ])


def _unwrap(m):
    base = getattr(m, "base_model", None)
    inner = getattr(base, "model", None) if base is not None else None
    return inner if inner is not None else m


def format_table(info: dict[str, Any]) -> str:
    rows = [("module", "entry", "type", "class", "params", "trainable", "dtype")]
    for role, m in info["modules"].items():
        rows.append((role, str(m["entry"]), m["type"], m["class"].rsplit(".", 1)[-1], f"{m['params']:,}",
                     f"{m['trainable_params']:,}", m["dtype"]))
    rows.append(("total", "", "", "", f"{info['total_params']:,}", f"{info['trainable_params']:,}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.insert(len(lines) - 1, "  ".join("-" * w for w in widths))
    extra = []
    if "encoder" in info["modules"]:
        e = info["modules"]["encoder"]
        extra.append(f"encoder: {e['out_dim']}-d, {e['tokens_per_image']} tokens per image")
    if "in_projector" in info["modules"]:
        extra.append(f"in_projector: {info['modules']['in_projector']['shape'][0]} -> {info['modules']['in_projector']['shape'][1]}")
    extra.append(f"llm: hidden {info['modules']['llm']['hidden_size']}, {info['modules']['llm']['hf_class']}; "
                 f"vocab {info['modules']['tokenizer']['vocab_size']}; train_mode {info['train_mode']}")
    return "\n".join(lines + [""] + extra)


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. base_dir=/data one_model.llm=llava_7b")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--meta", action="store_true",
                   help="plan without weights: build on the meta device from the checkpoints' config.json files, and "
                        "estimate training / inference memory")
    p.add_argument("--gpus", type=int, default=8, help="GPUs the ZeRO estimates shard over (with --meta; default 8)")


@command("inspect", "build a model from a config offline and summarise its modules")(_args)
def _inspect(args: argparse.Namespace) -> int:
    from omniplug.build import build_model

    if args.gpus < 1:
        raise ValueError(f"--gpus must be >= 1, got {args.gpus}")
    if args.meta:
        from omniplug.weights.hf_local import meta_build

        with meta_build():
            model = build_model(args.config, args.overrides, load_weights=False)
    else:
        model = build_model(args.config, args.overrides)
    info = describe(model)
    if args.meta:
        info["memory"] = memory_plan(model, gpus=args.gpus)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(format_table(info) + ("\n\n" + format_memory(info["memory"]) if args.meta else ""))
    return 0

"""Evaluation from the trainer: mean validation loss on the ``data.eval`` datasets (teacher forcing,
every loss term), plus task metrics from ``omniplug.eval`` when ``trainer.evaluate: true``.

The validation loss runs after every epoch when ``data.eval`` is set. Its samples are sharded
across ranks and the sums reduced, so the result does not depend on the number of processes.

Task metrics (mask IoU, generation scores, ...) come from one call into the eval package::

    omniplug.eval.evaluate(model, dataset, *, batch_size: int, max_samples: int | None) -> dict[str, float]

run on rank 0 for each ``data.eval`` dataset; while ``omniplug.eval`` has no ``evaluate``, only the
validation loss is reported.
"""

from __future__ import annotations

import importlib
import json
import math
import warnings
from collections import defaultdict
from pathlib import Path

import torch
from accelerate.utils import gather_object, set_seed
from torch.utils.data import DataLoader, Subset

from omniplug.build import build_dataset, build_model
from omniplug.config import Config
from omniplug.data.collate import Collator
from omniplug.config.schema import ConfigError
from omniplug.train import checkpoint as ckpt
from omniplug.train.accel import make_accelerator


@torch.no_grad()
def validation_loss(model, dataset, *, accelerator, batch_size: int, max_length: int,
                    max_samples: int | None = None, lockstep: bool = False) -> dict[str, float]:
    """``{"loss": mean, "lm_loss": mean, "seg/bce": mean, "seg/ciou": ..., "samples": n}`` over ``dataset``.

    Loss means are per sample over the samples that produced the term (a decoder term only exists
    for batches containing that decoder's trigger); decoders' own figures (``Decoder.validation_counts``,
    e.g. thresholded mask IoU) are summed numerators over summed denominators. The global random
    generators are left as they were (a validation in the middle of training keeps resume exact).

    ``lockstep`` (a sharded model: FSDP, ZeRO-3): every forward pass gathers weights from all ranks, so every
    rank runs as many batches as the busiest one; a rank with fewer repeats its first sample and discards it."""
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    mine = list(range(accelerator.process_index, n, accelerator.num_processes))
    sums: dict[str, float] = defaultdict(float)
    counts: dict[str, float] = defaultdict(float)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=_cuda_devices(accelerator.device)):
            if mine:
                loader = DataLoader(Subset(dataset, mine), batch_size=batch_size, shuffle=False,
                                    collate_fn=Collator(model, max_length=max_length),
                                    generator=torch.Generator().manual_seed(0))  # keep the global generators untouched
                for batch in loader:
                    out = model(batch.to(accelerator.device))
                    size = batch.input_ids.shape[0]
                    for key, value in out.scalars().items():
                        sums[key] += value * size
                        counts[key] += size
                    for task, dec_out in out.decoder_outputs.items():
                        figures = model.decoders[task].validation_counts(dec_out, batch.targets[task])
                        for key, (num, den) in figures.items():
                            sums[f"{task}/{key}"] += num
                            counts[f"{task}/{key}"] += den
            if lockstep:
                busiest = math.ceil(math.ceil(n / accelerator.num_processes) / batch_size)
                filler = Collator(model, max_length=max_length)([dataset[0]]) if n else None
                for _ in range(busiest - math.ceil(len(mine) / batch_size)):
                    model(filler.to(accelerator.device))  # output discarded
    finally:
        model.train(was_training)
    parts = gather_object([(dict(sums), dict(counts))]) if accelerator.num_processes > 1 else [(sums, counts)]
    total_sums: dict[str, float] = defaultdict(float)
    total_counts: dict[str, float] = defaultdict(float)
    for s, c in parts:
        for key in s:
            total_sums[key] += s[key]
            total_counts[key] += c[key]
    result = {key: total_sums[key] / total_counts[key] for key in total_sums if total_counts[key]}
    result["samples"] = float(n)
    if not all(math.isfinite(v) for v in result.values()):
        accelerator.print("warning: the validation loss is not finite")
    return result


def _cuda_devices(device: torch.device) -> list[int]:
    """The CUDA device whose generator ``fork_rng`` must also keep (none on CPU)."""
    device = torch.device(device)
    return [device.index or 0] if device.type == "cuda" else []


def run_evaluation(config: Config) -> dict[str, dict[str, float]]:
    """``trainer.evaluate: true``: evaluate the weights of ``trainer.resume_ckpt_path`` (a checkpoint,
    or ``auto`` for the newest in output_dir) or else ``one_model.weights`` on every ``data.eval``
    dataset; results go to ``output_dir/eval_results.json``."""
    tc = config.trainer
    if not config.data.eval:
        raise ConfigError("trainer.evaluate=true needs datasets to evaluate: set data.eval: [dataset entries]")
    accelerator = make_accelerator(tc)
    set_seed(tc.seed)
    model = build_model(config)
    source = ckpt.resolve_resume(tc.resume_ckpt_path, tc.output_dir)
    if source is not None:
        ckpt.load_weights(model, source)
    elif config.one_model.weights is None:
        warnings.warn("evaluating weights that were never trained: set trainer.resume_ckpt_path (a checkpoint or "
                      "'auto') or one_model.weights", stacklevel=2)
    model.to(accelerator.device)
    results: dict[str, dict[str, float]] = {}
    for name in config.data.eval:
        dataset = build_dataset(config, name)
        results[name] = validation_loss(model, dataset, accelerator=accelerator, batch_size=tc.batch_size_eval,
                                        max_length=config.data.max_length, max_samples=tc.eval_max_samples)
        if accelerator.is_main_process:
            results[name].update(task_metrics(model, dataset, batch_size=tc.batch_size_eval,
                                              max_samples=tc.eval_max_samples))
        accelerator.wait_for_everyone()
        accelerator.print(f"{name}: " + ", ".join(f"{k}={v:.4f}" for k, v in results[name].items()))
    if accelerator.is_main_process:
        out = Path(tc.output_dir).expanduser()
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval_results.json").write_text(json.dumps({"weights": str(source or config.one_model.weights),
                                                           "results": results}, indent=2) + "\n")
    return results


def task_metrics(model, dataset, *, batch_size: int, max_samples: int | None) -> dict[str, float]:
    """``omniplug.eval.evaluate`` on one dataset, or ``{}`` while the eval package provides none."""
    evaluate_task = getattr(importlib.import_module("omniplug.eval"), "evaluate", None)
    if evaluate_task is None:
        return {}
    was_training = model.training
    model.eval()
    try:
        return {k: float(v) for k, v in evaluate_task(model, dataset, batch_size=batch_size,
                                                      max_samples=max_samples).items()}
    finally:
        model.train(was_training)

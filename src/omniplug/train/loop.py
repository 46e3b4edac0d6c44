"""The one training loop (``omniplug train``), explicit and readable top to bottom.

    build model (same seed on every rank) -> datasets -> mixture stream -> AdamW on trainable params
    -> resume (weights, optimizer, train state, per-rank RNG) -> accelerate.prepare
    -> for each optimizer step: lr from the schedule; grad_accum_steps micro-batches forward/backward;
       clip; all ranks agree whether the loss was finite; step or skip; log; evaluate at epoch ends (and every
       trainer.eval_every steps) and stop when a validation misses a trainer.expect floor;
       checkpoint every save_every steps
    -> final checkpoint, trainable weights in output_dir, loss curve, summary.

Runs unchanged in one process, under ``accelerate launch --multi_gpu`` (DDP; CPU with
``ACCELERATE_USE_CPU=true``), with DeepSpeed ZeRO 0-3 (``trainer.zero_stage``) and with FSDP2
(``trainer.fsdp``). Only rank 0 writes files, except each rank's RNG state into checkpoints, the sharded
optimizer state (``deepspeed/``, ``fsdp/``: every rank its own shard) and its ``ranks/rank{r}.json`` summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import DistributedType, gather_object, load_fsdp_optimizer, save_fsdp_optimizer, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from omniplug.build import build_dataset, build_model
from omniplug.config import Config
from omniplug.data.collate import Collator
from omniplug.config.schema import ConfigError
from omniplug.train import checkpoint as ckpt
from omniplug.train.accel import make_accelerator, whole_model_build
from omniplug.train.evaluate import validation_loss
from omniplug.train.metrics import MetricsLog
from omniplug.train.mixing import MixedDataset, MixtureStream, RankBatches
from omniplug.train.schedulers import make_schedule
from omniplug.weights import save_trainable, trainable_state_dict


class NonFiniteLossError(RuntimeError):
    """Training stopped: too many consecutive steps had a non-finite loss or gradient."""


class ExpectationError(RuntimeError):
    """Training stopped: a validation missed a ``trainer.expect`` floor (outputs of the run so far are written)."""


@dataclass
class TrainResult:
    output_dir: Path
    steps: int  # optimizer steps done in total (this run and the runs it resumed)
    steps_this_run: int
    skipped: int
    first_loss: float | None
    last_loss: float | None
    seconds: float
    checkpoint: Path | None  # newest complete checkpoint
    model: Any = None  # the trained OneModel (unwrapped from DDP/DeepSpeed)


def train(config: Config, *, stop_after_steps: int | None = None) -> TrainResult:
    """Train ``config.one_model`` on ``config.data.train`` as ``config.trainer`` says.

    ``stop_after_steps`` ends the run early after that many total steps, as an interruption would
    (no final checkpoint; resume with ``trainer.resume_ckpt_path=auto``)."""
    tc = config.trainer
    _check_trainer(config)
    accelerator = make_accelerator(tc)
    rank, world = accelerator.process_index, accelerator.num_processes
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED  # trainer.zero_stage or an accelerate config
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    out = Path(tc.output_dir).expanduser()
    resume_from = ckpt.resolve_resume(tc.resume_ckpt_path, out)

    # --- model, data, optimizer: identical on every rank (same seed) ----------------------------------
    set_seed(tc.seed)
    with whole_model_build(accelerator):
        model = build_model(config)
    model.train()
    if tc.gradient_checkpointing:
        model.llm.enable_gradient_checkpointing()
    names = list(dict.fromkeys([*config.data.train, *(n for ph in config.data.schedule for n in ph["train"])]))
    datasets = [build_dataset(config, name, splits=tc.train_splits) for name in names]
    draws_per_step = tc.batch_size_train * world * tc.grad_accum_steps
    phases = [(ph["until_step"] * draws_per_step, [ph["train"].get(n, 0) for n in names]) for ph in config.data.schedule]
    stream = MixtureStream(sizes=[len(d) for d in datasets], ratios=[config.data.train.get(n, 0) for n in names],
                           seed=tc.seed, phases=phases)
    eval_sets = {name: build_dataset(config, name) for name in config.data.eval}
    collator = Collator(model, max_length=config.data.max_length)
    optimizer = make_optimizer(model, weight_decay=tc.weight_decay, lr=tc.init_lr)
    schedule = make_schedule(tc)
    state = ckpt.TrainState(world_size=world, lr_sched=tc.lr_sched)

    # --- resume -------------------------------------------------------------------------------------
    if resume_from is not None:
        ckpt.load_weights(model, resume_from)
        state = ckpt.load_state(resume_from)
        if not deepspeed and not fsdp:  # those two read their sharded optimizer state after prepare()
            opt_state = ckpt.load_optimizer_state(resume_from)
            if opt_state is None:
                raise ConfigError(f"checkpoint {resume_from} has no {ckpt.OPTIMIZER_NAME}; it cannot be resumed")
            optimizer.load_state_dict(opt_state)
        accelerator.print(f"resuming from {resume_from} (step {state.step}, {state.position} samples drawn)")

    if deepspeed:  # no dataloader goes through prepare(), so DeepSpeed is told the micro-batch size here
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        if ds_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
            ds_config["train_micro_batch_size_per_gpu"] = tc.batch_size_train
    stage = _zero_stage(accelerator) if deepspeed else None
    zero3 = stage == 3
    if (deepspeed and not zero3) or fsdp:  # they reduce gradients in buckets / per unit: no unused-parameter
        model.touch_all_trainable = True  # detection as in DDP (ZeRO-3 has its own: ignore_unused_parameters)
    if fsdp:
        _shard_llm_blocks(accelerator, model)
    model, optimizer = accelerator.prepare(model, optimizer)
    if deepspeed and resume_from is not None:
        model.load_checkpoint(str(resume_from / "deepspeed"), load_module_strict=False, load_lr_scheduler_states=False)
    if fsdp and resume_from is not None:
        load_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(resume_from / "fsdp"))
    sharded = fsdp or zero3  # every forward gathers weights from all ranks
    raw_model = accelerator.unwrap_model(model)
    trainable = [p for p in model.parameters() if p.requires_grad]

    loader = DataLoader(MixedDataset(datasets),
                        batch_sampler=RankBatches(stream, start=state.position, batch_size=tc.batch_size_train,
                                                  rank=rank, world_size=world, group_window=tc.length_group_window,
                                                  lengths=typical_lengths(datasets, collator)
                                                  if tc.length_group_window else None),
                        collate_fn=collator, num_workers=tc.num_workers,
                        generator=torch.Generator().manual_seed(tc.seed))  # the loader never touches global RNG
    batches = iter(loader)

    # generators last, so nothing above can shift them: a resumed run continues exactly
    if resume_from is None or not ckpt.load_rng(resume_from, rank):
        if resume_from is not None:
            warnings.warn(f"checkpoint {resume_from} has no RNG state for rank {rank}; reseeding", stacklevel=2)
        set_seed(tc.seed + rank)

    # --- the loop -------------------------------------------------------------------------------------
    log = MetricsLog(out, enabled=accelerator.is_main_process, resume_step=state.step if resume_from else None)
    if accelerator.is_main_process:
        config.save(out / "config.yaml")
    total_steps = tc.max_epoch * tc.iters_per_epoch
    save_every = tc.save_every or tc.iters_per_epoch
    start_step, started = state.step, time.perf_counter()
    data_hash = hashlib.sha256()
    last_saved: Path | None = resume_from
    save_pending = False
    missed: list[str] = []
    bar = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_main_process, desc="train",
               dynamic_ncols=True)

    while state.step < total_steps:
        t0 = time.perf_counter()
        epoch = state.step // tc.iters_per_epoch
        lr = schedule.lr(state.step)
        for group in optimizer.param_groups:
            group["lr"] = lr

        # forward/backward over grad_accum_steps micro-batches; gradients sync on the last one
        terms: dict[str, float] = {}
        finite = True
        for micro in range(tc.grad_accum_steps):
            batch = next(batches)
            data_hash.update(batch.input_ids.numpy().tobytes())
            last = micro == tc.grad_accum_steps - 1
            if deepspeed:  # the engine accumulates, scales, syncs and steps (at the last micro-batch) itself
                sync = accelerator.accumulate(model)
            else:
                sync = contextlib.nullcontext() if last else accelerator.no_sync(model)
            if stage in (2, 3) and world > 1:
                _check_same_modules(accelerator, batch, state.step + 1, stage=stage)
            with sync:
                output = model(batch.to(accelerator.device))
                loss = output.loss if output.loss.requires_grad else output.loss + sum(p.sum() * 0.0 for p in trainable)
                accelerator.backward(loss)  # divides by grad_accum_steps (under DeepSpeed the engine does)
            finite &= bool(torch.isfinite(output.loss.detach()))
            for key, value in output.scalars().items():
                terms[key] = terms.get(key, 0.0) + value / tc.grad_accum_steps

        grad_norm = _clip(accelerator, model, trainable, tc.max_grad_norm)
        finite = _all_ranks(accelerator, finite and math.isfinite(grad_norm))
        # DeepSpeed has already stepped, or skipped (and cleared) a step with a non-finite gradient norm;
        # there optimizer.step() and zero_grad() are no-ops
        if finite:
            optimizer.step()
            state.nonfinite_in_row = 0
        else:  # skip: no update, optimizer state untouched, gradients dropped
            state.skipped += 1
            state.nonfinite_in_row += 1
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.position += draws_per_step

        if state.step % tc.log_every == 0 or not finite or state.step == total_steps:
            terms = _mean_over_ranks(accelerator, terms)
            loss_value = terms.pop("loss")
            log.log({"step": state.step, "epoch": epoch, "lr": lr, "loss": loss_value, "grad_norm": grad_norm,
                     "skipped": not finite, "seconds": time.perf_counter() - t0, **terms})
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}", skipped=state.skipped)
        bar.update(1)
        if not finite:
            accelerator.print(f"step {state.step}: non-finite loss or gradient, step skipped "
                              f"({state.nonfinite_in_row} in a row, {state.skipped} in total)")
            if state.nonfinite_in_row >= tc.max_nonfinite_in_row:
                bar.close()
                log.close()
                raise NonFiniteLossError(
                    f"stopped at step {state.step}: the loss or gradient was non-finite for {state.nonfinite_in_row} "
                    f"steps in a row (trainer.max_nonfinite_in_row={tc.max_nonfinite_in_row}); weights are those of "
                    f"the last good step; last complete checkpoint: {last_saved or 'none'}. Lower trainer.init_lr, "
                    f"check the data of these steps, or raise max_nonfinite_in_row")

        if eval_sets and (state.step % tc.iters_per_epoch == 0 or (tc.eval_every and state.step % tc.eval_every == 0)):
            results = _evaluate_epoch(accelerator, raw_model, eval_sets, tc, config.data.max_length, log, out,
                                      state.step, lockstep=sharded)
            missed = missed_expectations(tc.expect, results, state.step)
            if not _all_ranks(accelerator, not missed):
                missed = missed or ["a validation floor (trainer.expect) missed on another rank"]
            save_pending |= bool(missed)  # checkpoint this step, then end the run below
        save_pending |= state.step % save_every == 0 or state.step == total_steps
        if save_pending and state.nonfinite_in_row == 0:  # never checkpoint in the middle of a non-finite run
            last_saved = save_checkpoint(accelerator, model, optimizer, state, out, keep_last=tc.keep_last_checkpoints)
            save_pending = False
        if missed or (stop_after_steps is not None and state.step >= stop_after_steps):
            break
    bar.close()
    seconds = time.perf_counter() - started

    # --- outputs ----------------------------------------------------------------------------------------
    finished = state.step >= total_steps
    weights = full_trainable_state(accelerator, model)  # collective when sharded: every rank calls it
    if finished and accelerator.is_main_process:
        save_trainable(raw_model, out, state=weights)  # output_dir works as one_model.weights / for omniplug infer
    _write_rank_summary(out, None if zero3 and rank else weights,  # ZeRO-3: other ranks hold partitions only
                        rank=rank, world=world, state=state, data_hash=data_hash.hexdigest())
    losses = log.losses()
    result = TrainResult(output_dir=out, steps=state.step, steps_this_run=state.step - start_step,
                         skipped=state.skipped, first_loss=losses[0][1] if losses else None,
                         last_loss=losses[-1][1] if losses else None, seconds=seconds, checkpoint=last_saved,
                         model=raw_model)
    if accelerator.is_main_process:
        curve = log.plot(out / "loss_curve.png")
        log.close()
        _print_summary(result, curve, finished=finished)
    accelerator.wait_for_everyone()
    if missed:
        raise ExpectationError(
            f"stopped at step {state.step}: the validation missed trainer.expect: {'; '.join(missed)}. Checkpoint "
            f"{last_saved or 'none'} and the loss curve are written. A mask decoder that has not converged by "
            f"then rarely does later (bench/HISTORY.md): change trainer.seed or the recipe, or relax trainer.expect")
    return result


# --- pieces -------------------------------------------------------------------------------------------
def typical_lengths(datasets, collator: Collator, *, n: int = 16) -> list[float]:
    """Each dataset's mean token count (image tokens included) over its first ``n`` samples: the key
    length grouping sorts draws by (``trainer.length_group_window``)."""
    lengths = []
    for dataset in datasets:
        batch = collator([dataset[i] for i in range(min(n, len(dataset)))])
        lengths.append(float(batch.attention_mask.sum(dim=1).float().mean()))
    return lengths


def make_optimizer(model, *, weight_decay: float, lr: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters only; no weight decay on biases, norms and other 1-d tensors."""
    decay, no_decay, seen = [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (no_decay if p.ndim < 2 or name.endswith("bias") or "norm" in name.lower() else decay).append(p)
    if not decay and not no_decay:
        raise ConfigError("nothing to train: no parameter requires a gradient; check one_model.train_mode, the "
                          "modules' freeze flags and the LLM's lora_enable")
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr)


def save_checkpoint(accelerator, model, optimizer, state: ckpt.TrainState, out: Path, *, keep_last: int) -> Path:
    """Every rank writes its RNG state (and, sharded, its optimizer shard) into the temp dir; rank 0 writes the
    rest and renames."""
    writer = ckpt.CheckpointWriter(out, state.step)
    if accelerator.is_main_process:
        writer.begin()
    accelerator.wait_for_everyone()
    writer.write_rank(accelerator.process_index)
    deepspeed = accelerator.distributed_type == DistributedType.DEEPSPEED
    fsdp = accelerator.distributed_type == DistributedType.FSDP
    if deepspeed:  # sharded optimizer state: DeepSpeed writes its own files from every rank
        model.save_checkpoint(str(writer.tmp / "deepspeed"), exclude_frozen_parameters=True)
    if fsdp:  # torch.distributed.checkpoint: one file per rank under fsdp/optimizer_0/
        save_fsdp_optimizer(accelerator.state.fsdp_plugin, accelerator, optimizer, model, str(writer.tmp / "fsdp"))
    weights = full_trainable_state(accelerator, model)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        opt_state = None if deepspeed or fsdp else optimizer.state_dict()
        writer.finish(model=accelerator.unwrap_model(model), optimizer_state=opt_state, state=state,
                      keep_last=keep_last, weights=weights)
    accelerator.wait_for_everyone()
    return writer.final


def full_trainable_state(accelerator, model) -> dict[str, torch.Tensor]:
    """``trainable_state_dict`` with whole tensors (on every rank; under ZeRO-3 on rank 0, the one that writes).
    Sharded models gather them: FSDP's DTensors, ZeRO-3's partitions. A collective then: every rank calls it, in
    the same place."""
    raw = accelerator.unwrap_model(model)
    state = trainable_state_dict(raw)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and _zero_stage(accelerator) == 3:
        # DeepSpeed's own gather (accelerate's get_state_dict), whole tensors on rank 0; the decoders' buffers
        # are not partitioned. Other ranks keep their (empty) partitions: only rank 0 writes weights.
        full = model._zero3_consolidated_16bit_state_dict()
        if not accelerator.is_main_process:
            return state
        missing = [k for k in state if k not in full]
        if missing:
            raise RuntimeError(f"DeepSpeed's gathered state dict lacks {missing[:3]}: cannot save the trained weights")
        return {k: full[k] for k in state}
    if accelerator.distributed_type == DistributedType.FSDP:
        from torch.distributed.tensor import DTensor

        state = {k: v.full_tensor() if isinstance(v, DTensor) else v for k, v in state.items()}
    return state


def _check_same_modules(accelerator, batch, step: int, *, stage: int) -> None:
    """ZeRO-2 and -3 need every rank to run the same modules in every micro-batch, and fail loudly otherwise
    (one small all-gather per micro-batch):

    * ZeRO-3 gathers a module's weights from all ranks when the module runs: a decoder or encoder that runs on
      one rank only stalls the others;
    * ZeRO-2 reduces gradients in flat buckets filled in the order backward produces them; a module that runs
      on one rank only changes that order there, and the ranks then add up gradients of *different* weights:
      training goes on, silently wrong (measured: 1e-2 off the single-process weights after 8 steps).
    DDP, ZeRO-0/1 and FSDP reduce per parameter or per unit and handle ranks on different tasks."""
    mine = (tuple(sorted(task for task, targets in batch.targets.items() if len(targets))),
            batch.pixel_values is not None, batch.label_maps is not None)
    every = gather_object([mine])
    if any(other != mine for other in every):
        runs = "; ".join(f"rank {r}: decoders {list(t)}, images {i}, label maps {m}" for r, (t, i, m) in enumerate(every))
        why = ("gathers a module's weights from all ranks when it runs" if stage == 3 else
               "reduces gradients in buckets filled in backward's order, which a module running on one rank changes")
        raise ConfigError(f"step {step}: trainer.zero_stage={stage} needs every rank to run the same modules in every "
                          f"micro-batch, but {runs}. ZeRO-{stage} {why}. Use trainer.zero_stage=1 or trainer.fsdp=true "
                          f"(both handle ranks on different tasks), or a data mix in which every sample has images "
                          f"and the same task tokens")


def _zero_stage(accelerator) -> int:
    return int(accelerator.state.deepspeed_plugin.deepspeed_config["zero_optimization"].get("stage", 0))


def _shard_llm_blocks(accelerator, model) -> None:
    """FSDP shards each of the LLM's blocks as its own unit (gathered one at a time in forward and backward);
    the encoder, projectors and decoders stay in the root unit, gathered once per forward: they run only for
    some batches, and a unit that one rank gathers and another skips would stall both."""
    plugin = accelerator.state.fsdp_plugin
    plugin.transformer_cls_names_to_wrap = model.llm.layer_class_names()


def _check_trainer(config: Config) -> None:
    tc = config.trainer
    if not config.data.train:
        raise ConfigError("data.train is empty: name the dataset entries to train on with their ratios, "
                          "e.g. data: {train: {refcoco_train: 3, vqa_train: 1}}")
    for key in ("grad_accum_steps", "batch_size_train", "iters_per_epoch", "max_epoch", "max_nonfinite_in_row",
                "log_every"):
        if getattr(tc, key) < 1:
            raise ConfigError(f"trainer.{key} must be >= 1, got {getattr(tc, key)}")
    for key in ("save_every", "eval_every"):
        if getattr(tc, key) < 0:
            raise ConfigError(f"trainer.{key} must be >= 0 (0 = once per epoch), got {getattr(tc, key)}")
    if tc.length_group_window < 0:
        raise ConfigError(f"trainer.length_group_window must be >= 0 (global batches sorted by length together; "
                          f"0 = no length grouping), got {tc.length_group_window}")
    for key, floor in tc.expect.items():
        entry, _, metric = key.partition("/")
        if entry not in config.data.eval or not metric:
            raise ConfigError(f"trainer.expect key {key!r} must be '<data.eval entry>/<metric>' (data.eval: "
                              f"{list(config.data.eval)}), e.g. 'referring_val/seg/ciou'; trainer.expect=null drops "
                              f"the floors a config inherits")
        if not isinstance(floor, dict) or not set(floor) <= {"min", "max", "by_step"} or not {"min", "max"} & set(floor):
            raise ConfigError(f"trainer.expect[{key!r}] must be a mapping with min and/or max (and optionally "
                              f"by_step), got {floor!r}")
    if tc.eval_every and not config.data.eval:
        raise ConfigError(f"trainer.eval_every={tc.eval_every} but data.eval names no dataset to validate on; "
                          f"set data.eval: [dataset entries] or trainer.eval_every=0")


def _clip(accelerator, model, trainable, max_norm: float | None) -> float:
    """Clip to ``max_norm`` (no clipping when None) and return the total gradient norm."""
    if accelerator.distributed_type == DistributedType.DEEPSPEED:  # DeepSpeed clips itself (gradient_clipping)
        norm = model.get_global_grad_norm()
        return float(norm) if norm is not None else 0.0
    norm = accelerator.clip_grad_norm_(trainable, max_norm if max_norm else float("inf"))
    return float(norm)


def _all_ranks(accelerator, flag: bool) -> bool:
    if accelerator.num_processes == 1:
        return flag
    bad = torch.tensor([0.0 if flag else 1.0], device=accelerator.device)
    return bool(accelerator.reduce(bad, reduction="sum").item() == 0)


def _mean_over_ranks(accelerator, terms: dict[str, float]) -> dict[str, float]:
    """Average every loss term over the ranks that have it (ranks may see different tasks)."""
    if accelerator.num_processes == 1:
        return terms
    merged: dict[str, list[float]] = {}
    for part in gather_object([terms]):
        for key, value in part.items():
            merged.setdefault(key, []).append(value)
    return {key: sum(values) / len(values) for key, values in merged.items()}


def missed_expectations(expect: dict[str, dict[str, float]], results: dict[str, dict[str, float]],
                        step: int) -> list[str]:
    """The ``trainer.expect`` floors this step's validation ``results`` ({entry: {metric: value}}) misses, each
    as "entry/metric=value < min"; floors whose ``by_step`` lies ahead are not checked yet. A floor naming a
    metric the validation does not report is a ConfigError that lists the ones it does."""
    missed = []
    for key, floor in expect.items():
        entry, _, metric = key.partition("/")
        if entry not in results:
            continue
        if metric not in results[entry]:
            raise ConfigError(f"trainer.expect: {entry!r} reports no {metric!r}; its validation reports "
                              f"{', '.join(sorted(results[entry]))}")
        if step < floor.get("by_step", 0):
            continue
        value = results[entry][metric]
        if "min" in floor and not value >= floor["min"]:  # NaN misses too
            missed.append(f"{key}={value:.4f} < {floor['min']} (by step {int(floor.get('by_step', 0))})")
        if "max" in floor and not value <= floor["max"]:
            missed.append(f"{key}={value:.4f} > {floor['max']} (by step {int(floor.get('by_step', 0))})")
    return missed


def _evaluate_epoch(accelerator, model, eval_sets, tc, max_length: int, log: MetricsLog, out: Path, step: int, *,
                    lockstep: bool) -> dict[str, dict[str, float]]:
    results = {}
    for name, dataset in eval_sets.items():
        result = validation_loss(model, dataset, accelerator=accelerator, batch_size=tc.batch_size_eval,
                                 max_length=max_length, max_samples=tc.eval_max_samples, lockstep=lockstep)
        if accelerator.is_main_process:
            accelerator.print(f"step {step}: {name} validation " + ", ".join(f"{k}={v:.4f}" for k, v in result.items()))
            log.log_eval(step, {f"{name}/{k}": v for k, v in result.items()})
            with open(out / "eval_metrics.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, "dataset": name, **result}) + "\n")
        results[name] = result
    return results


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()


def _write_rank_summary(out: Path, weights: dict[str, torch.Tensor] | None, *, rank: int, world: int, state: ckpt.TrainState,
                        data_hash: str) -> None:
    """``output_dir/ranks/rank{r}.json``: proof of which ranks ran, on which data, ending with which weights."""
    folder = out / "ranks"
    folder.mkdir(parents=True, exist_ok=True)
    info = {"rank": rank, "world_size": world, "steps": state.step, "pid": os.getpid(),
            "weights_sha256": weights_digest(weights) if weights is not None else None, "data_sha256": data_hash}
    (folder / f"rank{rank}.json").write_text(json.dumps(info, indent=2) + "\n")


def _print_summary(result: TrainResult, curve: Path | None, *, finished: bool) -> None:
    first = f"{result.first_loss:.4f}" if result.first_loss is not None else "n/a"
    last = f"{result.last_loss:.4f}" if result.last_loss is not None else "n/a"
    status = "done" if finished else "stopped early (resume with trainer.resume_ckpt_path=auto)"
    print(f"train {status}: step {result.steps} ({result.steps_this_run} this run, {result.skipped} skipped) in "
          f"{result.seconds:.1f} s; loss {first} -> {last}")
    print(f"  metrics {result.output_dir / 'metrics.csv'}" + (f"; curve {curve}" if curve else "")
          + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))

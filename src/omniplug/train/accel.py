"""The ``Accelerator`` for a ``trainer`` section: DDP settings, mixed precision, DeepSpeed ZeRO, FSDP, launch checks.

Sharding always goes through accelerate's own plugins. Two CPU-only adjustments make them run with gloo on a
machine without GPUs (how the tests exercise them; on CUDA neither applies):

* DeepSpeed: accelerate selects DeepSpeed only when it is *not* told ``cpu`` and then initialises the process
  group with whatever backend it picked for the device, none on a CPU-only machine. The loop therefore drops
  ``ACCELERATE_USE_CPU``, names the gloo backend and sets ``DS_ACCELERATOR=cpu`` (DeepSpeed's own device choice).
* FSDP: accelerate 1.15 enables its FSDP plugin only for GPU-like device types (``state.py``: the FSDP switch sits
  inside the multi-GPU branch), although ``fully_shard`` itself runs on CPU with gloo. The loop sets the
  distributed type accelerate would have set, after which ``prepare``, clipping and sharded checkpoints are
  accelerate's own code paths.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType, InitProcessGroupKwargs

from omniplug.config import TrainerConfig
from omniplug.config.schema import ConfigError

_TRUE = ("1", "true", "yes")


def make_accelerator(tc: TrainerConfig) -> Accelerator:
    """DDP kwargs, bf16 autocast on CUDA only, DeepSpeed when ``zero_stage`` is set (or when launched with an
    accelerate DeepSpeed config), FSDP2 when ``fsdp`` is. Refuses launches where the processes would not see
    each other."""
    if tc.zero_stage is not None and tc.fsdp:
        raise ConfigError("trainer.zero_stage and trainer.fsdp both shard the model: choose one (ZeRO through "
                          "DeepSpeed, or PyTorch FSDP2)")
    has_cuda = torch.cuda.is_available()
    on_cuda = has_cuda and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in _TRUE
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    mixed = "no"
    if tc.amp and on_cuda:
        mixed = "bf16"
    elif tc.amp:
        warnings.warn("trainer.amp: bf16 autocast is only used on CUDA; on CPU bf16 matmuls are ~400x slower, "
                      "so training stays fp32", stacklevel=3)
    # A decoder whose trigger is absent from a rank's batch (or an encoder on a text-only batch) leaves its
    # parameters without gradients on that rank; DDP must be told, or it waits forever / errors next step.
    handlers: list = [DistributedDataParallelKwargs(find_unused_parameters=tc.ddp_find_unused_parameters)]
    plugin = fsdp_plugin = None
    if tc.zero_stage is not None:
        plugin = _deepspeed_plugin(tc, bf16=mixed == "bf16")
        if not has_cuda:
            if launched < 2:
                raise ConfigError("trainer.zero_stage on a machine without GPUs needs several processes, e.g. "
                                  "`DS_ACCELERATOR=cpu torchrun --nproc_per_node 2 $(which omniplug) train -c ...` "
                                  "(single-process ZeRO shards nothing; leave zero_stage unset)")
            os.environ.pop("ACCELERATE_USE_CPU", None)  # accelerate turns DeepSpeed off when told cpu
            os.environ.setdefault("DS_ACCELERATOR", "cpu")
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
    if tc.fsdp:
        fsdp_plugin = _fsdp_plugin()
        if not on_cuda and launched < 2:
            raise ConfigError("trainer.fsdp without GPUs needs several processes, e.g. `ACCELERATE_USE_CPU=true "
                              "torchrun --nproc_per_node 2 $(which omniplug) train -c ...`")
        if not has_cuda:
            os.environ["ACCELERATE_USE_CPU"] = "true"  # a gloo process group on CPU
    accelerator = Accelerator(mixed_precision=mixed, kwargs_handlers=handlers, deepspeed_plugin=plugin,
                              fsdp_plugin=fsdp_plugin, gradient_accumulation_steps=tc.grad_accum_steps)
    if fsdp_plugin is not None and accelerator.distributed_type == DistributedType.MULTI_CPU:
        _fsdp_on_cpu(accelerator, fsdp_plugin)
    if launched != accelerator.num_processes:
        raise ConfigError(f"launched as {launched} processes but accelerate sees {accelerator.num_processes}: every "
                          f"process would train alone and write the same files. Without GPUs set "
                          f"ACCELERATE_USE_CPU=true (accelerate launch --multi_gpu ... or torchrun); see docs/training.md")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and \
            accelerator.distributed_type != DistributedType.DEEPSPEED:
        warnings.warn("a DeepSpeed launch config was given but accelerate runs without DeepSpeed (it does when "
                      "told cpu); training with plain DDP. Set trainer.zero_stage instead", stacklevel=3)
    if tc.fsdp and accelerator.distributed_type != DistributedType.FSDP:
        raise ConfigError(f"trainer.fsdp: accelerate runs {accelerator.distributed_type.value}, not FSDP; launch "
                          f"several processes (torchrun / accelerate launch --multi_gpu)")
    return accelerator


def _deepspeed_plugin(tc: TrainerConfig, *, bf16: bool):
    from accelerate.utils import DeepSpeedPlugin

    try:
        import deepspeed  # noqa: F401
    except ImportError:
        raise ConfigError("trainer.zero_stage needs DeepSpeed: pip install 'omniplug[deepspeed]'") from None
    # torch AdamW inside ZeRO (DeepSpeedCPUAdam would compile a C++ extension first: ~75 s).
    # zero3_init_flag off: every rank builds the whole model, then deepspeed.initialize partitions it. Built
    # under zero.Init, the build's own steps (vocabulary resize, peft's trainable token rows: CUDA-only code in
    # peft 0.21) would meet partitioned weights.
    return DeepSpeedPlugin(zero3_init_flag=False, hf_ds_config={
        "train_micro_batch_size_per_gpu": tc.batch_size_train,
        "gradient_accumulation_steps": tc.grad_accum_steps,
        "gradient_clipping": tc.max_grad_norm or 0.0,
        # ZeRO-3: the trainable weights are gathered on rank 0 when a checkpoint is written
        "zero_optimization": {"stage": tc.zero_stage, "stage3_gather_16bit_weights_on_model_save": True},
        "zero_allow_untested_optimizer": True,
        "bf16": {"enabled": bf16},
    })


def _fsdp_plugin():
    from accelerate.utils import FullyShardedDataParallelPlugin

    # FSDP2; the loop names the LLM's block class to wrap once the model exists (loop._shard_llm_blocks).
    # Sharded checkpoints: every rank writes its own shard of the optimizer state (torch.distributed.checkpoint).
    return FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                          auto_wrap_policy="transformer_based_wrap",
                                          state_dict_type="SHARDED_STATE_DICT")


def _fsdp_on_cpu(accelerator: Accelerator, plugin) -> None:
    """What accelerate's state does for FSDP on a GPU (``AcceleratorState.__init__``), done for gloo on CPU."""
    from accelerate.state import PartialState

    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


@contextlib.contextmanager
def whole_model_build(accelerator: Accelerator) -> Iterator[None]:
    """Build the model whole on every rank, also under ZeRO-3: accelerate registers its DeepSpeed config with
    transformers, which then makes ``from_pretrained`` partition weights while loading (``zero.Init``) and peft
    gather them with CUDA-only code. deepspeed.initialize (in ``prepare``) partitions the built model instead."""
    plugin = accelerator.state.deepspeed_plugin if accelerator.distributed_type == DistributedType.DEEPSPEED else None
    if plugin is None or not plugin.hf_ds_config.is_zero3():
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()

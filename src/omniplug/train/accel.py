"""The ``Accelerator`` for a ``trainer`` section: DDP settings, mixed precision, DeepSpeed, launch checks."""

from __future__ import annotations

import os
import warnings

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, DistributedType

from omniplug.config import TrainerConfig
from omniplug.config.schema import ConfigError


def make_accelerator(tc: TrainerConfig) -> Accelerator:
    """DDP kwargs, bf16 autocast on CUDA only, DeepSpeed when ``zero_stage`` is set (or when launched with an
    accelerate DeepSpeed config). Refuses launches where the processes would not see each other."""
    on_cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
    mixed = "no"
    if tc.amp and on_cuda:
        mixed = "bf16"
    elif tc.amp:
        warnings.warn("trainer.amp: bf16 autocast is only used on CUDA; on CPU bf16 matmuls are ~400x slower, "
                      "so training stays fp32", stacklevel=3)
    # A decoder whose trigger is absent from a rank's batch (or an encoder on a text-only batch) leaves its
    # parameters without gradients on that rank; DDP must be told, or it waits forever / errors next step.
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=tc.ddp_find_unused_parameters)]
    plugin = None
    if tc.zero_stage is not None:
        from accelerate.utils import DeepSpeedPlugin

        if not on_cuda:
            raise ConfigError("trainer.zero_stage: DeepSpeed through accelerate needs CUDA GPUs; accelerate turns "
                              "DeepSpeed off on CPU. On CPU leave zero_stage unset (plain DDP, see docs/training.md)")
        # torch AdamW inside ZeRO (DeepSpeedCPUAdam would compile a C++ extension first: ~75 s)
        plugin = DeepSpeedPlugin(hf_ds_config={
            "train_micro_batch_size_per_gpu": tc.batch_size_train,
            "gradient_accumulation_steps": tc.grad_accum_steps,
            "gradient_clipping": tc.max_grad_norm or 0.0,
            "zero_optimization": {"stage": tc.zero_stage},
            "zero_allow_untested_optimizer": True,
            "bf16": {"enabled": mixed == "bf16"},
        })
    accelerator = Accelerator(mixed_precision=mixed, kwargs_handlers=handlers, deepspeed_plugin=plugin,
                              gradient_accumulation_steps=tc.grad_accum_steps)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched != accelerator.num_processes:
        raise ConfigError(f"launched as {launched} processes but accelerate sees {accelerator.num_processes}: every "
                          f"process would train alone and write the same files. Without GPUs set "
                          f"ACCELERATE_USE_CPU=true (accelerate launch --multi_gpu ... or torchrun); see docs/training.md")
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true" and \
            accelerator.distributed_type != DistributedType.DEEPSPEED:
        warnings.warn("a DeepSpeed launch config was given but accelerate runs without DeepSpeed (it does on CPU); "
                      "training with plain DDP", stacklevel=3)
    return accelerator

"""Loading the parts of a Stable-Diffusion-layout directory for the ``diffusion`` decoder.

A directory as diffusers writes it: ``unet/`` (UNet2DConditionModel), ``vae/`` (AutoencoderKL;
absent for pixel-space UNets), ``scheduler/`` and, optionally, ``text_encoder/`` + ``tokenizer/``
(used only for the alignment loss and an empty-prompt unconditional embedding).

diffusers is imported here, lazily, so that loading the plugin registry stays fast.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from omniplug.weights.hf_local import load_pretrained, local_checkpoint
from omniplug.config.schema import ConfigError

#: YAML alias -> (diffusers scheduler class name, config overrides). ``None`` in YAML keeps the
#: scheduler saved in the checkpoint directory.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpm_solver_pp": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class DiffusionParts:
    unet: nn.Module
    vae: nn.Module | None
    scheduler_config: dict[str, Any]
    scheduler_class: type
    text_encoder: nn.Module | None
    text_tokenizer: Any


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


def load_parts(path: str, *, vae: str | None, scheduler: str | None, text_encoder: str | None,
               tokenizer: str, dtype: torch.dtype, from_scratch: bool = False,
               pooled_conditioning: bool = False) -> DiffusionParts:
    """``pooled_conditioning`` (with ``from_scratch``): the UNet gets a projection class embedding as wide as
    its cross-attention, for the pooled conditioning (``DiffusionDecoder.predict``)."""
    import diffusers

    what = "decoder diffusion"
    root = local_checkpoint(path, what=what, must_contain=("unet", "scheduler"))
    def load(cls, folder: Path, pooled: bool = False):
        if from_scratch:  # random initialisation from the folder's config.json (models trained from nothing)
            config = dict(cls.load_config(str(folder)))
            if pooled:
                config.update(class_embed_type="projection",
                              projection_class_embeddings_input_dim=config["cross_attention_dim"])
            model = cls.from_config(config)
            return model if dtype == torch.float32 else model.to(dtype)  # fp32 is from_config's own dtype
        return load_pretrained(cls, folder, torch_dtype=dtype)

    unet = load(diffusers.UNet2DConditionModel, _sub(root, "unet", what), pooled_conditioning)
    vae_model = None
    if vae is not None:
        vae_model = load(diffusers.AutoencoderKL, _sub(root, vae, what, hint="or set vae: none for a pixel-space UNet"))
    sched_cls, sched_config = _scheduler(root / "scheduler", scheduler)
    te = tok = None
    if text_encoder is not None:
        from transformers import AutoModel, AutoTokenizer

        te = load_pretrained(AutoModel, _sub(root, text_encoder, what, hint="or set text_encoder: null"), dtype=dtype)
        tok = load_pretrained(AutoTokenizer, _sub(root, tokenizer, what, hint="the text encoder needs its tokenizer"))
    return DiffusionParts(unet=unet, vae=vae_model, scheduler_config=sched_config, scheduler_class=sched_cls,
                          text_encoder=te, text_tokenizer=tok)


def _sub(root: Path, name: str, what: str, *, hint: str = "") -> Path:
    p = root / name
    if not p.is_dir():
        raise ConfigError(f"{what}: {root} has no {name}/ folder{'; ' + hint if hint else ''}")
    return p


def _scheduler(folder: Path, alias: str | None) -> tuple[type, dict[str, Any]]:
    """The scheduler class and its config: the saved one, or ``alias`` built from the saved config
    (so the training noise schedule — betas, timesteps, prediction type — is kept)."""
    import diffusers

    files = list(folder.glob("scheduler_config.json"))
    if not files:
        raise ConfigError(f"decoder diffusion: {folder} has no scheduler_config.json")
    config = json.loads(files[0].read_text())
    if alias is None:
        name, overrides = config.get("_class_name", ""), {}
    else:
        name, overrides = SCHEDULERS[alias]
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ConfigError(f"decoder diffusion: {folder} names scheduler {name!r}, which diffusers does not have; "
                          f"choose one with scheduler: {' | '.join(SCHEDULERS)}")
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    config.update(overrides)
    return cls, config


def new_scheduler(cls: type, config: dict[str, Any]) -> Any:
    """A fresh scheduler per sampling call: schedulers keep per-run state (step index)."""
    return cls.from_config(config)


def training_scheduler(config: dict[str, Any]) -> Any:
    """The DDPM forward process of the checkpoint's noise schedule (``add_noise``, ``get_velocity``)."""
    import diffusers

    keys = set(inspect.signature(diffusers.DDPMScheduler.__init__).parameters)
    return diffusers.DDPMScheduler.from_config({k: v for k, v in config.items() if k in keys})


def step_kwargs(scheduler: Any, *, eta: float, generator: Any) -> dict[str, Any]:
    """Extra ``scheduler.step`` arguments, for the schedulers that take them (as diffusers' pipelines do)."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generator
    return kwargs

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


def load_motion_parts(path: str, *, vae: str | None, scheduler: str | None, dtype: torch.dtype,
                      from_scratch: bool = False) -> DiffusionParts:
    """A video folder: ``unet/`` (a ``UNetMotionModel``; or a ``UNet2DConditionModel`` with ``motion_adapter/``, which
    AnimateDiff combines with ``UNetMotionModel.from_unet2d``), ``vae/`` (absent for pixel space), ``scheduler/``."""
    import diffusers

    what = "decoder video_diffusion"
    root = local_checkpoint(path, what=what, must_contain=("unet", "scheduler"))

    def load(cls, folder: Path):
        if from_scratch:
            model = cls.from_config(dict(cls.load_config(str(folder))))
            return model if dtype == torch.float32 else model.to(dtype)
        return load_pretrained(cls, folder, torch_dtype=dtype)

    unet_dir = _sub(root, "unet", what)
    class_name = json.loads((unet_dir / "config.json").read_text()).get("_class_name", "")
    if class_name == "UNetMotionModel":
        unet = load(diffusers.UNetMotionModel, unet_dir)
    else:
        adapter = load(diffusers.MotionAdapter, _sub(root, "motion_adapter", what,
                                                     hint="a 2D UNet needs an AnimateDiff motion adapter beside it"))
        unet = diffusers.UNetMotionModel.from_unet2d(load(diffusers.UNet2DConditionModel, unet_dir), adapter)
    vae_model = None
    if vae is not None:
        vae_model = load(diffusers.AutoencoderKL, _sub(root, vae, what, hint="or set vae: none for a pixel-space UNet"))
    sched_cls, sched_config = _scheduler(root / "scheduler", scheduler)
    return DiffusionParts(unet=unet, vae=vae_model, scheduler_config=sched_config, scheduler_class=sched_cls,
                          text_encoder=None, text_tokenizer=None)


def vae_encode(vae: nn.Module | None, pixels: torch.Tensor, *, sample: bool, patch: int = 1) -> torch.Tensor:
    """Pixels in [-1, 1] -> scaled latents (no VAE: the pixels, folded into ``3 * patch**2`` channels)."""
    import torch.nn.functional as F

    if vae is None:
        return F.pixel_unshuffle(pixels, patch) if patch > 1 else pixels
    dist = vae.encode(pixels).latent_dist
    z = dist.sample() if sample else dist.mode()
    shift = vae.config.shift_factor
    return (z - shift if shift else z) * vae.config.scaling_factor


def vae_decode(vae: nn.Module | None, latents: torch.Tensor, *, patch: int = 1) -> torch.Tensor:
    """Scaled latents -> pixels in [0, 1]."""
    import torch.nn.functional as F

    if vae is None and patch > 1:
        latents = F.pixel_shuffle(latents, patch)
    if vae is not None:
        z = latents / vae.config.scaling_factor
        shift = vae.config.shift_factor
        latents = vae.decode(z + shift if shift else z).sample
    return (latents / 2 + 0.5).clamp(0, 1)


def save_parts(directory: Path, *, unet: nn.Module, vae: nn.Module | None, scheduler_class: type,
               scheduler_config: dict[str, Any]) -> dict[str, Any]:
    """Write ``unet/``, ``vae/`` (when there is one) and ``scheduler/`` (the noise schedule trained with) as diffusers
    lays them out; returns the catalogue-entry changes (``vae``) that load the folder back."""
    unet.save_pretrained(str(directory / "unet"))
    if vae is not None:
        vae.save_pretrained(str(directory / "vae"))
    new_scheduler(scheduler_class, scheduler_config).save_pretrained(str(directory / "scheduler"))
    return {"vae": "vae" if vae is not None else None}


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


# --- pieces both diffusion decoders (image and video) use ----------------------------------------------------
def noised(train_scheduler: Any, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training draw: (noisy latents, timesteps, what the UNet should predict for them: the noise, the
    clean latents or v, per the schedule's ``prediction_type``)."""
    noise = torch.randn_like(latents)
    steps = torch.randint(0, train_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
    noisy = train_scheduler.add_noise(latents, noise, steps)
    kind = train_scheduler.config.prediction_type
    if kind == "v_prediction":
        return noisy, steps, train_scheduler.get_velocity(latents, noise, steps)
    return noisy, steps, {"epsilon": noise, "sample": latents}[kind]


def drop_condition(cond: torch.Tensor, uncond: torch.Tensor, p: float) -> torch.Tensor:
    """Classifier-free guidance training: each row's conditioning replaced by ``uncond`` with probability ``p``."""
    if p <= 0:
        return cond
    drop = torch.rand(cond.shape[0], device=cond.device) < p
    return torch.where(drop[:, None, None], uncond.to(cond.dtype).expand_as(cond), cond)


def generators(seeds: list[int | None]) -> list[torch.Generator]:
    """One CPU generator per row (a None seed draws a fresh one), as diffusers' pipelines take a list."""
    return [torch.Generator("cpu").manual_seed(int(torch.seed()) if s is None else s) for s in seeds]


def guided(pred: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance on a prediction for [unconditional; conditional] rows."""
    uncond_pred, cond_pred = pred.chunk(2)
    return uncond_pred + guidance * (cond_pred - uncond_pred)


def pixels(image: Any, width: int, height: int) -> torch.Tensor:
    """A PIL image or (H, W, 3) uint8 array -> (3, height, width) in [-1, 1] (bicubic resize when needed)."""
    import numpy as np
    from PIL import Image

    im = Image.fromarray(np.asarray(image, dtype=np.uint8)) if isinstance(image, np.ndarray) else image
    im = im.convert("RGB")
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1).contiguous()


def prediction_type(config: dict[str, Any], wanted: str | None, *, from_scratch: bool, what: str, path: str) -> None:
    """Set what a from-scratch UNet predicts (a checkpoint's is fixed: a different wish is a config error)."""
    if wanted is None:
        return
    trained = config.get("prediction_type", "epsilon")
    if not from_scratch and wanted != trained:
        raise ConfigError(f"{what}: {path} was trained to predict {trained!r}; prediction_type {wanted!r} only applies "
                          f"to a UNet trained from scratch (from_scratch: true)")
    config["prediction_type"] = wanted


def check_steps_and_guidance(steps: int, guidance: float) -> None:
    if steps <= 0:
        raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
    if guidance < 0:
        raise ValueError(f"guidance_scale must be >= 0 (1 or less turns guidance off), got {guidance}")

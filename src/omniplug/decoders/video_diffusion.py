"""Decoder ``video_diffusion``: video tokens -> a diffusers motion UNet (AnimateDiff) -> clips.

The image decoder's path (``diffusion``) with a time axis: each occurrence of the K trigger tokens
``<vid_0> .. <vid_{K-1}>`` gives K LLM hidden states; the output projector maps them to ``(S, D)``, the
conditioning of every frame (``encoder_hidden_states``, D = the UNet's ``cross_attention_dim``). The
UNet is a ``UNetMotionModel`` (spatial blocks of an SD UNet plus AnimateDiff's temporal attention),
loaded from ``unet/`` as such, or combined from a 2D ``unet/`` and a ``motion_adapter/`` as AnimateDiff
does. Latents are ``(B, C, F, h, w)``; frames go through the VAE one by one (``vae: none`` and
``patch_size`` as in ``diffusion`` for pixel-space UNets).

Classifier-free guidance uses an unconditional embedding (``learned``, trained by dropping the
condition with probability ``cond_dropout``, or ``zeros``). Sampling is the loop of diffusers'
``AnimateDiffPipeline`` (same noise draw, scheduler calls and guidance; a test checks parity with the
pipeline given ``prompt_embeds`` / ``negative_prompt_embeds``). Training: noise-prediction (or x0 / v)
MSE over every frame. ``postprocess`` returns one clip per occurrence: a list of ``num_frames`` RGB
PIL images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from omniplug.base import Decoder
from omniplug.config.schema import ConfigError
from omniplug.data.generation import gen_tokens
from omniplug.decoders import _diffusion_parts as parts
from omniplug.decoders.diffusion import to_pil
from omniplug.registry import DECODERS
from omniplug.types import DecoderInput, DecoderOutput
from omniplug.weights.hf_local import exported_entry


@dataclass
class VideoOutput(DecoderOutput):
    batch_index: Tensor  # (M,) sample of each occurrence
    embeddings: Tensor  # (M, S, D) conditioning


@dataclass
class ClipTarget:
    """The raw target of one video occurrence: its frames (PIL images or (H, W, 3) arrays)."""

    frames: list[Any]
    caption: str | None = None


@DECODERS.register("video_diffusion")
class VideoDiffusionDecoder(Decoder):
    default_task = "vid"
    default_token = "<vid>"
    output_kind = "videos"
    checkpoint_modules = ("unet", "vae")

    def __init__(self, *, model_name_or_path: str, num_tokens: int = 4, token: str = "<vid>",
                 seq_len: int | None = None, vae: str | None = "vae", num_frames: int = 8,
                 scheduler: Literal["ddim", "ddpm", "pndm", "euler", "euler_ancestral", "dpm_solver_pp", "unipc"] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 7.5, eta: float = 0.0,
                 height: int | None = None, width: int | None = None, seed: int | None = 0,
                 uncond_embedding: Literal["learned", "zeros"] = "learned", cond_dropout: float = 0.1,
                 diffusion_loss_weight: float = 1.0, train_unet: bool = False, patch_size: int = 1,
                 dtype: Literal["float32", "float16", "bfloat16"] = "float32", freeze: bool = False,
                 from_scratch: bool = False, prediction_type: Literal["epsilon", "sample", "v_prediction"] | None = None,
                 max_frames: int = 32) -> None:
        super().__init__()
        what = "decoder video_diffusion"
        try:
            self.tokens = gen_tokens(token, num_tokens)
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        if not 0.0 <= cond_dropout < 1.0:
            raise ConfigError(f"{what}: cond_dropout must be in [0, 1), got {cond_dropout}")
        if patch_size < 1 or (patch_size > 1 and vae not in (None, "none")):
            raise ConfigError(f"{what}: patch_size {patch_size} needs a pixel-space UNet (vae: none) and must be >= 1")
        vae = None if vae == "none" else vae
        p = parts.load_motion_parts(model_name_or_path, vae=vae, scheduler=scheduler, dtype=parts.torch_dtype(dtype),
                                    from_scratch=from_scratch)
        self.unet, self.vae = p.unet, p.vae
        self._scheduler_class, self._scheduler_config = p.scheduler_class, dict(p.scheduler_config)
        parts.prediction_type(self._scheduler_config, prediction_type, from_scratch=from_scratch, what=what,
                              path=model_name_or_path)
        self._train_scheduler = parts.training_scheduler(self._scheduler_config)
        ucfg = self.unet.config
        self.prompt_dim = int(ucfg.cross_attention_dim)
        self.seq_len = seq_len or num_tokens
        self.patch = int(patch_size)
        self.latent_channels = int(self.vae.config.latent_channels) if self.vae is not None else 3 * self.patch ** 2
        if int(ucfg.in_channels) != self.latent_channels:
            raise ConfigError(f"{what}: the UNet takes {ucfg.in_channels} channels but the "
                              f"{'VAE latents have' if self.vae is not None else 'pixel space has'} {self.latent_channels}")
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else self.patch
        self._halvings = 2 ** (len(ucfg.block_out_channels) - 1)  # the UNet's down blocks halve the latents
        self.height = height or int(ucfg.sample_size) * self.vae_factor
        self.width = width or int(ucfg.sample_size) * self.vae_factor
        self.max_frames = min(int(max_frames), int(ucfg.motion_max_seq_length))
        self.num_frames, self.num_inference_steps, self.guidance_scale = num_frames, num_inference_steps, guidance_scale
        self.eta, self.seed = eta, seed
        try:
            self.check_sampling(frames=num_frames, height=self.height, width=self.width, steps=num_inference_steps,
                                guidance=guidance_scale)
        except ValueError as exc:
            raise ConfigError(f"{what}: {exc}") from None
        self.uncond = nn.Parameter(torch.zeros(self.seq_len, self.prompt_dim), requires_grad=uncond_embedding == "learned")
        self.learned_uncond = uncond_embedding == "learned"
        self.cond_dropout = cond_dropout if self.learned_uncond else 0.0
        self.diffusion_loss_weight, self.train_unet, self.freeze = diffusion_loss_weight, train_unet, freeze

    def check_sampling(self, *, frames: int, height: int, width: int, steps: int, guidance: float) -> None:
        """Raise ValueError for settings the UNet cannot take."""
        if not 1 <= frames <= self.max_frames:
            raise ValueError(f"num_frames must be 1..{self.max_frames} (the motion modules' max sequence length / "
                             f"max_frames), got {frames}")
        for name, size in (("height", height), ("width", width)):
            step = self.vae_factor * self._halvings
            if size <= 0 or size % step:
                raise ValueError(f"{name}={size} must be a positive multiple of {step} (VAE factor {self.vae_factor} x "
                                 f"{self._halvings}, the UNet's down blocks)")
        parts.check_steps_and_guidance(steps, guidance)

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        """An AnimateDiff-layout folder: ``unet/`` (the whole ``UNetMotionModel``), ``vae/`` (when there is one) and
        ``scheduler/`` (the noise schedule trained with, prediction type included)."""
        changes = parts.save_parts(directory, unet=self.unet, vae=self.vae, scheduler_class=self._scheduler_class,
                                   scheduler_config=self._scheduler_config)
        return exported_entry(entry, ref, **changes)

    def set_trainable(self) -> None:
        self.requires_grad_(False)
        if self.freeze:
            return
        self.uncond.requires_grad_(self.learned_uncond)
        if self.train_unet:
            self.unet.requires_grad_(True)

    # --- data ----------------------------------------------------------------------------------------
    def prepare_images(self, images: list[Image.Image]) -> None:
        return None

    def prepare_target(self, target: Any, image: Image.Image | None) -> Tensor:
        """(F, 3, H, W) in [-1, 1]."""
        frames = target.frames if isinstance(target, ClipTarget) else target
        if not isinstance(frames, (list, tuple)) or not frames:
            raise TypeError(f"decoder video_diffusion: a target is a ClipTarget or a list of frames, got "
                            f"{type(target).__name__}")
        if len(frames) != self.num_frames:
            raise ValueError(f"decoder video_diffusion: a target clip has {len(frames)} frames but the decoder makes "
                             f"{self.num_frames} (num_frames)")
        return torch.stack([self._pixels(f) for f in frames])

    def _pixels(self, image: Image.Image | np.ndarray) -> Tensor:
        return parts.pixels(image, self.width, self.height)

    # --- forward and loss --------------------------------------------------------------------------
    def forward(self, inp: DecoderInput) -> VideoOutput:
        prompts = inp.prompts
        if prompts.shape[1:] != (self.seq_len, self.prompt_dim):
            raise ValueError(f"decoder video_diffusion: got conditioning of shape {tuple(prompts.shape[1:])} per "
                             f"occurrence but expects ({self.seq_len}, {self.prompt_dim}) = (seq_len, UNet "
                             f"cross_attention_dim); set seq_len to the output projector's sequence length")
        return VideoOutput(batch_index=inp.batch_index, embeddings=prompts)

    def predict(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The UNet's prediction for (M, C, F, h, w) latents under (M, S, D) conditioning (every frame's)."""
        frames = x.shape[2]
        return self.unet(x, t, encoder_hidden_states=cond.repeat_interleave(frames, dim=0)).sample

    def encode(self, clips: Tensor, *, sample: bool) -> Tensor:
        """(M, F, 3, H, W) in [-1, 1] -> (M, C, F, h, w) scaled latents, frame by frame."""
        m, f = clips.shape[:2]
        latents = parts.vae_encode(self.vae, clips.flatten(0, 1), sample=sample, patch=self.patch)
        return latents.unflatten(0, (m, f)).transpose(1, 2)

    def decode(self, latents: Tensor) -> Tensor:
        """(M, C, F, h, w) -> (M, F, 3, H, W) in [0, 1]."""
        m, _, f = latents.shape[:3]
        frames = parts.vae_decode(self.vae, latents.transpose(1, 2).flatten(0, 1), patch=self.patch)
        return frames.unflatten(0, (m, f))

    def loss(self, out: VideoOutput, targets: list[Tensor]) -> dict[str, Tensor]:
        cond = out.embeddings
        device, dtype = cond.device, self.unet.dtype
        with torch.no_grad():
            latents = self.encode(torch.stack(targets).to(device, dtype), sample=True)
        noisy, steps, target = parts.noised(self._train_scheduler, latents)
        hidden = parts.drop_condition(cond, self.uncond, self.cond_dropout if self.training else 0.0)
        pred = self.predict(noisy, steps, hidden.to(dtype))
        return {"video": self.diffusion_loss_weight * F.mse_loss(pred.float(), target.float())}

    # --- sampling --------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, embeddings: Tensor, *, seeds: list[int | None] | None = None, num_frames: int | None = None,
               num_inference_steps: int | None = None, guidance_scale: float | None = None,
               height: int | None = None, width: int | None = None,
               output: Literal["pixels", "latents"] = "pixels") -> Tensor:
        """Clips (M, F, 3, H, W) in [0, 1] for conditioning (M, S, D); ``seeds[i]`` seeds row i's noise."""
        frames = self.num_frames if num_frames is None else num_frames
        steps = self.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance = self.guidance_scale if guidance_scale is None else guidance_scale
        h, w = height or self.height, width or self.width
        self.check_sampling(frames=frames, height=h, width=w, steps=steps, guidance=guidance)
        m = embeddings.shape[0]
        device, dtype = embeddings.device, self.unet.dtype
        generators = parts.generators(seeds or [self.seed] * m)
        scheduler = parts.new_scheduler(self._scheduler_class, self._scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        shape = (1, self.latent_channels, frames, h // self.vae_factor, w // self.vae_factor)
        latents = torch.cat([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)
        latents = latents * scheduler.init_noise_sigma
        cfg = guidance > 1
        cond = embeddings.to(dtype)
        if cfg:
            cond = torch.cat([self.uncond.to(device, dtype).expand(m, -1, -1), cond])
        extra = parts.step_kwargs(scheduler, eta=self.eta, generator=generators)
        for t in scheduler.timesteps:
            x = torch.cat([latents] * 2) if cfg else latents
            x = scheduler.scale_model_input(x, t)
            pred = self.predict(x, t, cond)
            pred = parts.guided(pred, guidance) if cfg else pred
            latents = scheduler.step(pred, t, latents, **extra, return_dict=False)[0]
        if output == "latents":
            return latents
        return self.decode(latents).float()

    def postprocess(self, out: VideoOutput, inp: DecoderInput) -> list[list[Image.Image]]:
        """One clip (a list of PIL frames) per occurrence; occurrence k of a sample uses seed ``seed + k``."""
        b_idx = out.batch_index.tolist()
        rank = [b_idx[:i].count(b) for i, b in enumerate(b_idx)]
        seeds = [None if self.seed is None else self.seed + k for k in rank]
        clips = self.sample(out.embeddings, seeds=seeds)
        return [[to_pil(frame) for frame in clip] for clip in clips]

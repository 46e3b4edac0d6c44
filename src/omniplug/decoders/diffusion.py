"""Decoder ``diffusion``: generation tokens -> a Stable-Diffusion-family UNet -> images, and edits.

Conditioning
    Each occurrence of the K trigger tokens ``<gen_0> .. <gen_{K-1}>`` gives K LLM hidden states;
    the output projector maps them to ``(S, D)``: S conditioning vectors of the UNet's
    ``cross_attention_dim`` D. A per-token projector (``mlp``) keeps S = K; ``gen_transformer``
    turns the K hiddens into S = ``num_queries`` vectors (77 for SD 1.5, as NExT-GPT / GILL do).
    Set ``seq_len`` to S. The vectors are the UNet's ``encoder_hidden_states`` directly: no text
    round trip, so the whole path trains end to end.

Pooled conditioning (``pooled_conditioning``)
    The mean of the S vectors also enters the UNet's class embedding (``class_embed_type:
    projection``), which diffusers adds to the time embedding of every ResNet block, as SDXL adds its
    pooled text embedding. A UNet trained from scratch gets that embedding with this option; a
    checkpoint that has one uses it whatever the option says.

Classifier-free guidance
    An unconditional embedding ``(S, D)``: learned (trained by replacing the condition with it with
    probability ``cond_dropout``; starts from the empty-prompt text embedding when a text encoder is
    configured, else zeros), ``zeros``, or ``empty_text`` (fixed, from the text encoder). No text
    encoder is needed at inference.

Training (``loss``)
    ``diffusion``: noise-prediction MSE through the UNet (trainable when ``train_unet``; gradients
    reach the projector and LLM either way). ``align`` (only with ``text_encoder``): NExT-GPT's MSE
    between the projected embedding and the text encoder's embedding of the target caption padded
    to S tokens. The VAE and the text encoder never train. ``focus_weight`` W: targets that carry a
    focus mask (``GenerationTarget.focus``: the pixels the description is about, e.g. the world's
    objects) count the error there 1 + W times the background's, each image's weights averaging 1.

Patches (``patch_size`` p, pixel-space UNets)
    The UNet works on p x p pixel patches folded into 3 p^2 channels (``pixel_unshuffle``; Simple
    Diffusion's patching): a lossless, untrained stand-in for a VAE that gives the UNet p^2 fewer
    positions. The default model's 64 px pictures at p = 4 are 16 x 16 x 48, about 6x cheaper per
    training step than 64 x 64 x 3 on a CPU.

``noise_repeats`` R
    Each target is noised R times (independent noise and timestep) per training step, under the same
    conditioning: R x the UNet's samples for one pass of the LLM, which is worth it where the UNet is
    the cheap part (patches) and generation examples are few.

Content read-out (``content_weight`` W, ``content_bins`` b)
    A linear head on the pooled conditioning predicts the target's colour histogram (b^3 bins, over
    its focus pixels when it has a focus mask); the KL from the histogram, times W, is the ``content``
    loss. It asks the conditioning to say what differs between pictures before the UNet has learned to
    listen, as the SAM decoder's prompt-region alignment does for ``<seg>`` prompts. Training only.

Inference (``postprocess``: sampling happens here, ``forward`` only conditions)
    The sampling loop is the one of diffusers' ``StableDiffusionPipeline`` (same noise, scheduler
    calls and guidance; a test checks pixel parity). Occurrence k of a sample uses seed ``seed + k``.

Editing
    When the answer also holds a mask from the task ``mask_from`` (the decoders listed before this
    one in ``one_model.decoders`` hand their outputs over in ``DecoderInput.context``), the k-th
    ``<gen>`` run of a sample inpaints its source image inside the k-th mask: a 9-channel
    inpainting UNet gets mask and masked-source latents; any other UNet has its latents blended each
    step with the source latents noised to the same level outside the mask (RePaint-style, as
    diffusers' inpainting pipeline does for plain UNets). With ``paste_back`` the source pixels
    outside the mask are copied back at the source's own resolution, so they are exactly unchanged.
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from omniplug.base import Decoder
from omniplug.data.generation import GenerationTarget, gen_tokens
from omniplug.decoders import _diffusion_parts as parts
from omniplug.registry import DECODERS
from omniplug.config.schema import ConfigError
from omniplug.types import DecoderInput, DecoderOutput
from omniplug.weights.hf_local import exported_entry


@dataclass
class DiffusionOutput(DecoderOutput):
    embeddings: Tensor  # (M, S, D) conditioning for the UNet, one row per occurrence


@dataclass
class SourceImages:
    """What ``prepare_images`` returns: the sources of edits, per sample."""

    pixels: Tensor  # (N, 3, H, W) in [-1, 1], resized to the decoder's height x width
    originals: list[np.ndarray]  # (h, w, 3) uint8 at their own size, for pasting back


@dataclass
class PreparedTarget:
    pixels: Tensor  # (3, H, W) in [-1, 1]
    caption: str | None
    mask: Tensor | None  # (1, H, W) in {0, 1}
    source: Tensor | None  # (3, H, W) in [-1, 1], the image being edited
    focus: Tensor | None = None  # (1, H, W) in {0, 1}: the pixels the description is about (focus_weight)


@DECODERS.register("diffusion")
class DiffusionDecoder(Decoder):
    default_task = "gen"
    default_token = "<gen>"
    output_kind = "images"
    checkpoint_modules = ("unet", "vae", "text_encoder")

    def __init__(self, *, model_name_or_path: str, num_tokens: int = 4, token: str = "<gen>",
                 seq_len: int | None = None, vae: str | None = "vae",
                 scheduler: Literal["ddim", "ddpm", "pndm", "euler", "euler_ancestral", "dpm_solver_pp", "unipc"] | None = None,
                 num_inference_steps: int = 25, guidance_scale: float = 7.5, eta: float = 0.0,
                 height: int | None = None, width: int | None = None, seed: int | None = 0,
                 uncond_embedding: Literal["learned", "zeros", "empty_text"] = "learned", cond_dropout: float = 0.1,
                 text_encoder: str | None = None, tokenizer: str = "tokenizer",
                 diffusion_loss_weight: float = 1.0, align_loss_weight: float = 1.0, train_unet: bool = False,
                 mask_from: str | None = "seg", paste_back: bool = True,
                 dtype: Literal["float32", "float16", "bfloat16"] = "float32", freeze: bool = False,
                 from_scratch: bool = False,
                 prediction_type: Literal["epsilon", "sample", "v_prediction"] | None = None,
                 pooled_conditioning: bool = False, focus_weight: float = 0.0, patch_size: int = 1,
                 noise_repeats: int = 1, content_weight: float = 0.0, content_bins: int = 4) -> None:
        super().__init__()
        try:
            self.tokens = gen_tokens(token, num_tokens)
        except ValueError as exc:
            raise ConfigError(f"decoder diffusion: {exc}") from None
        if seq_len is not None and seq_len < 1:
            raise ConfigError(f"decoder diffusion: seq_len must be >= 1, got {seq_len}")
        if not (focus_weight >= 0.0 and math.isfinite(focus_weight)):
            raise ConfigError(f"decoder diffusion: focus_weight must be a finite number >= 0, got {focus_weight}")
        if not 0.0 <= cond_dropout < 1.0:
            raise ConfigError(f"decoder diffusion: cond_dropout must be in [0, 1), got {cond_dropout}")
        if text_encoder is None and uncond_embedding == "empty_text":
            raise ConfigError("decoder diffusion: uncond_embedding: empty_text needs text_encoder (e.g. text_encoder: text_encoder)")
        if vae == "none":
            vae = None
        if not (content_weight >= 0.0 and math.isfinite(content_weight)):
            raise ConfigError(f"decoder diffusion: content_weight must be a finite number >= 0, got {content_weight}")
        if not 2 <= content_bins <= 16:
            raise ConfigError(f"decoder diffusion: content_bins must be in [2, 16] (bins per colour channel), got {content_bins}")
        self.content_weight, self.content_bins = float(content_weight), int(content_bins)
        if noise_repeats < 1:
            raise ConfigError(f"decoder diffusion: noise_repeats must be >= 1, got {noise_repeats}")
        self.noise_repeats = int(noise_repeats)
        if patch_size < 1:
            raise ConfigError(f"decoder diffusion: patch_size must be >= 1, got {patch_size}")
        if patch_size > 1 and vae is not None:
            raise ConfigError(f"decoder diffusion: patch_size {patch_size} folds pixels into channels for a pixel-space "
                              f"UNet; with a VAE ({vae!r}) the latents are already small: set patch_size: 1 or vae: none")
        self.patch = int(patch_size)
        p = parts.load_parts(model_name_or_path, vae=vae, scheduler=scheduler, text_encoder=text_encoder,
                             tokenizer=tokenizer, dtype=parts.torch_dtype(dtype), from_scratch=from_scratch,
                             pooled_conditioning=pooled_conditioning)
        self.unet, self.vae, self.text_encoder, self.text_tokenizer = p.unet, p.vae, p.text_encoder, p.text_tokenizer
        self._scheduler_class, self._scheduler_config = p.scheduler_class, dict(p.scheduler_config)
        # what the UNet predicts; a from-scratch UNet may pick it (a checkpoint's is fixed)
        parts.prediction_type(self._scheduler_config, prediction_type, from_scratch=from_scratch,
                              what="decoder diffusion", path=model_name_or_path)
        self._train_scheduler = parts.training_scheduler(self._scheduler_config)
        ucfg = self.unet.config
        if ucfg.time_cond_proj_dim is not None or ucfg.addition_embed_type is not None:
            raise ConfigError("decoder diffusion: this UNet needs extra conditioning (guidance embedding or SDXL-style "
                              "added text/time embeddings); only Stable-Diffusion-1/2-style UNets are supported")
        self.prompt_dim = int(ucfg.cross_attention_dim)
        self.pooled = ucfg.class_embed_type == "projection"  # pooled conditioning joins the time embedding
        # content read-out (content_weight > 0): pooled conditioning -> the target's colour histogram
        self.content_head = nn.Linear(self.prompt_dim, self.content_bins ** 3) if self.content_weight else None
        if pooled_conditioning and not self.pooled:
            raise ConfigError(f"decoder diffusion: pooled_conditioning needs a UNet with class_embed_type: projection; "
                              f"{model_name_or_path}'s UNet has none (a UNet trained from scratch gets one: "
                              f"from_scratch: true)")
        if ucfg.class_embed_type not in (None, "projection") or (ucfg.class_embed_type is None and ucfg.num_class_embeds):
            raise ConfigError(f"decoder diffusion: the UNet's class conditioning ({ucfg.class_embed_type or 'num_class_embeds'}) "
                              "is not supported; use class_embed_type: projection (pooled conditioning) or none")
        if self.pooled and ucfg.projection_class_embeddings_input_dim != self.prompt_dim:
            raise ConfigError(f"decoder diffusion: the UNet's projection_class_embeddings_input_dim is "
                              f"{ucfg.projection_class_embeddings_input_dim} but the pooled conditioning is "
                              f"{self.prompt_dim}-d (cross_attention_dim); set them equal")
        self.seq_len = seq_len or num_tokens
        self.latent_channels = int(self.vae.config.latent_channels) if self.vae is not None else 3 * self.patch ** 2
        if self.vae is None and int(ucfg.out_channels) != self.latent_channels:
            raise ConfigError(f"decoder diffusion: a pixel-space UNet with patch_size {self.patch} must output "
                              f"3 x {self.patch}^2 = {self.latent_channels} channels, but {model_name_or_path}'s UNet "
                              f"has out_channels {ucfg.out_channels}; set patch_size to match the UNet")
        self.inpainting = int(ucfg.in_channels) == 2 * self.latent_channels + 1
        if not self.inpainting and int(ucfg.in_channels) != self.latent_channels:
            raise ConfigError(f"decoder diffusion: the UNet takes {ucfg.in_channels} channels but the "
                              f"{'VAE latents have' if self.vae is not None else 'pixel space has'} {self.latent_channels}; "
                              f"{'set vae: none only for pixel-space UNets' if self.vae is None else 'check the checkpoint'}")
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else self.patch
        self.height = height or int(ucfg.sample_size) * self.vae_factor
        self.width = width or int(ucfg.sample_size) * self.vae_factor
        self.num_inference_steps, self.guidance_scale, self.eta, self.seed = num_inference_steps, guidance_scale, eta, seed
        try:
            self.check_sampling(height=self.height, width=self.width, steps=num_inference_steps, guidance=guidance_scale)
        except ValueError as exc:
            raise ConfigError(f"decoder diffusion: {exc}") from None
        if text_encoder is not None:
            self._check_text_encoder()
            with torch.no_grad():
                uncond = self.encode_text([""])[0].float()  # the empty prompt, as SD's own uncond
        else:
            uncond = torch.zeros(self.seq_len, self.prompt_dim)
        if uncond_embedding == "zeros":
            uncond = torch.zeros_like(uncond)
        self.uncond = nn.Parameter(uncond, requires_grad=uncond_embedding == "learned")
        self.learned_uncond = uncond_embedding == "learned"
        self.cond_dropout = cond_dropout if self.learned_uncond else 0.0
        self.diffusion_loss_weight, self.align_loss_weight = diffusion_loss_weight, align_loss_weight
        self.focus_weight = float(focus_weight)
        self.train_unet, self.mask_from, self.paste_back, self.freeze = train_unet, mask_from, paste_back, freeze

    # --- configuration ---------------------------------------------------------------------------
    def check_sampling(self, *, height: int, width: int, steps: int, guidance: float) -> None:
        """Raise ValueError for sampling settings that cannot work."""
        for name, size in (("height", height), ("width", width)):
            if size <= 0 or size % self.vae_factor:
                ok = max(self.vae_factor, size // self.vae_factor * self.vae_factor)
                raise ValueError(f"{name}={size} is not a positive multiple of the VAE factor {self.vae_factor}; "
                                 f"use e.g. {ok} or {ok + self.vae_factor}")
        parts.check_steps_and_guidance(steps, guidance)

    def _check_text_encoder(self) -> None:
        width = getattr(self.text_encoder.config, "hidden_size", None)
        if width != self.prompt_dim:
            raise ConfigError(f"decoder diffusion: the text encoder is {width}-d but the UNet's cross_attention_dim is "
                              f"{self.prompt_dim}; use the text encoder the UNet was trained with")
        limit = getattr(self.text_encoder.config, "max_position_embeddings", self.seq_len)
        if self.seq_len > limit:
            raise ConfigError(f"decoder diffusion: seq_len={self.seq_len} exceeds the text encoder's {limit} positions "
                              f"(the alignment target is the caption padded to seq_len tokens)")

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        """A Stable-Diffusion-layout folder as diffusers writes it: ``unet/``, ``vae/`` (when there is one),
        ``scheduler/`` (the noise schedule trained with, prediction type included), ``text_encoder/`` +
        ``tokenizer/`` (when used)."""
        changes: dict[str, Any] = {"text_encoder": None, **parts.save_parts(
            directory, unet=self.unet, vae=self.vae, scheduler_class=self._scheduler_class,
            scheduler_config=self._scheduler_config)}
        if self.text_encoder is not None:
            self.text_encoder.save_pretrained(str(directory / "text_encoder"))
            self.text_tokenizer.save_pretrained(str(directory / "tokenizer"))
            changes.update(text_encoder="text_encoder", tokenizer="tokenizer")
        return exported_entry(entry, ref, **changes)

    def set_trainable(self) -> None:
        self.requires_grad_(False)
        if self.freeze:
            return
        self.uncond.requires_grad_(self.learned_uncond)
        if self.train_unet:
            self.unet.requires_grad_(True)
        if self.content_head is not None:
            self.content_head.requires_grad_(True)

    # --- data ------------------------------------------------------------------------------------
    def prepare_images(self, images: list[Image.Image]) -> SourceImages:
        return SourceImages(pixels=torch.stack([self._pixels(im) for im in images]),
                            originals=[np.asarray(im.convert("RGB")) for im in images])

    def prepare_target(self, target: Any, image: Image.Image | None) -> PreparedTarget:
        if isinstance(target, (Image.Image, np.ndarray)):
            target = GenerationTarget(image=target)
        if not isinstance(target, GenerationTarget):
            raise TypeError(f"decoder diffusion: a target must be a GenerationTarget or an image, got {type(target).__name__}")
        mask = self._mask(target.mask) if target.mask is not None else None
        source = None
        if mask is not None and self.inpainting:
            if image is None:
                raise ValueError("decoder diffusion: an edit target (with a mask) needs the sample's source image")
            source = self._pixels(image)
        focus = (self._mask(target.focus) if target.focus is not None and (self.focus_weight or self.content_weight)
                 else None)
        return PreparedTarget(pixels=self._pixels(target.image), caption=target.caption, mask=mask, source=source,
                              focus=focus)

    def _pixels(self, image: Image.Image | np.ndarray) -> Tensor:
        return parts.pixels(image, self.width, self.height)

    def _mask(self, mask: Any, size: tuple[int, int] | None = None) -> Tensor:
        """(1, H, W) float {0,1} at ``size`` (h, w), default the decoder's size."""
        arr = mask_array(mask)
        h, w = size or (self.height, self.width)
        if arr.shape != (h, w):
            arr = np.asarray(Image.fromarray(arr.astype(np.uint8) * 255).resize((w, h), Image.Resampling.NEAREST)) > 127
        return torch.from_numpy(arr.astype(np.float32))[None]

    # --- forward and loss ------------------------------------------------------------------------
    def forward(self, inp: DecoderInput) -> DiffusionOutput:
        prompts = inp.prompts
        if prompts.shape[1:] != (self.seq_len, self.prompt_dim):
            raise ValueError(f"decoder diffusion: got conditioning of shape {tuple(prompts.shape[1:])} per occurrence but "
                             f"expects ({self.seq_len}, {self.prompt_dim}) = (seq_len, UNet cross_attention_dim); "
                             f"set the decoder's seq_len to the output projector's sequence length (num_queries)")
        return DiffusionOutput(batch_index=inp.batch_index, embeddings=prompts)

    def loss(self, out: DiffusionOutput, targets: list[PreparedTarget]) -> dict[str, Tensor]:
        cond = out.embeddings
        content = self._content_loss(cond, targets) if self.content_head is not None and self.training else None
        if self.noise_repeats > 1:  # R (noise, timestep) draws per target: R x the UNet samples, one LLM pass
            targets, cond = list(targets) * self.noise_repeats, cond.repeat(self.noise_repeats, 1, 1)
        device, dtype = cond.device, self.unet.dtype
        pixels = torch.stack([t.pixels for t in targets]).to(device, dtype)
        with torch.no_grad():
            latents = self.encode(pixels, sample=True)
        noisy, steps, target = parts.noised(self._train_scheduler, latents)
        if self.inpainting:
            noisy = torch.cat([noisy, *self._inpaint_inputs(targets, device, dtype)], dim=1)
        hidden = parts.drop_condition(cond, self.uncond, self.cond_dropout if self.training else 0.0)
        pred = self.predict(noisy, steps, hidden.to(dtype))
        weights = self._focus_weights(targets, pred.shape[-2:], device)
        if weights is None:
            error = F.mse_loss(pred.float(), target.float())
        else:
            error = (weights * (pred.float() - target.float()).square()).mean()
        losses = {"diffusion": self.diffusion_loss_weight * error}
        captioned = [i for i, t in enumerate(targets) if t.caption]
        if self.text_encoder is not None and captioned and self.align_loss_weight:
            with torch.no_grad():
                text = self.encode_text([targets[i].caption for i in captioned]).float()
            losses["align"] = self.align_loss_weight * F.mse_loss(cond[captioned].float(), text)
        if content is not None:
            losses["content"] = self.content_weight * content
        return losses

    def colour_histograms(self, targets: list[PreparedTarget]) -> Tensor:
        """(M, bins^3): each target's colour histogram (``content_bins`` per channel), over its focus
        pixels when it has a focus mask (what the description is about), else over the whole picture."""
        b = self.content_bins
        rows = []
        for t in targets:
            levels = ((t.pixels.float() / 2 + 0.5).clamp(0, 1) * b).long().clamp(max=b - 1)  # (3, H, W)
            index = (levels[0] * b + levels[1]) * b + levels[2]
            weight = t.focus[0].float() if t.focus is not None and t.focus.sum() > 0 else torch.ones_like(index, dtype=torch.float32)
            hist = torch.zeros(b ** 3).index_add_(0, index.flatten(), weight.flatten())
            rows.append(hist / hist.sum())
        return torch.stack(rows)

    def _content_loss(self, cond: Tensor, targets: list[PreparedTarget]) -> Tensor:
        """KL(target histogram || read-out of the pooled conditioning): 0 when the conditioning names the
        colours of what the picture is about. Why: a UNet trained from scratch only learns to use a prompt
        whose conditioning already says what differs between pictures; the LLM's ``<gen>`` states, trained
        through the diffusion loss alone, say it weakly (bench/HISTORY.md, probe gen_conditioning; "What the conditioning
        carries"), as the ``<seg>`` prompts did before the SAM decoder's prompt-region alignment."""
        hist = self.colour_histograms(targets).to(cond.device)
        log_pred = F.log_softmax(self.content_head(cond.float().mean(dim=1)), dim=-1)
        return F.kl_div(log_pred, hist, reduction="batchmean")

    def _focus_weights(self, targets: list[PreparedTarget], size: tuple[int, int], device: torch.device) -> Tensor | None:
        """(M, 1, h, w) per-pixel weights of the diffusion error, or None for the plain mean. With
        ``focus_weight`` W, a pixel in its target's focus mask counts 1 + W times one outside it, and
        each image's weights average 1 (the loss keeps its scale; images without a mask weigh uniformly).
        Why: in a generated scene most of the error is background that no description predicts, so the
        prompt's share of the gradient is small and a UNet trained from scratch learns to ignore it."""
        if not self.focus_weight or all(t.focus is None for t in targets):
            return None
        focus = torch.stack([t.focus if t.focus is not None else torch.zeros(1, self.height, self.width)
                             for t in targets]).to(device, torch.float32)
        if self.patch > 1:  # patches: each channel is one pixel of a patch, weighed as that pixel
            focus = F.pixel_unshuffle(focus.expand(-1, 3, -1, -1), self.patch)
        elif tuple(focus.shape[-2:]) != tuple(size):  # latent space: the share of each cell that is in focus
            focus = F.adaptive_avg_pool2d(focus, tuple(size))
        weights = 1.0 + self.focus_weight * focus
        return weights / weights.mean(dim=(1, 2, 3), keepdim=True)

    def predict(self, x: Tensor, t: Tensor, cond: Tensor) -> Tensor:
        """The UNet's prediction (noise, x0 or v, per ``prediction_type``) for (M, C, h, w) inputs ``x`` at
        timesteps ``t`` under (M, S, D) conditioning ``cond``. A UNet with ``class_embed_type: projection``
        also gets the mean of the S conditioning vectors through its class embedding, added to the time
        embedding of every ResNet block (as SDXL adds its pooled text embedding): a global route for what
        the picture holds, next to cross-attention's local one."""
        pooled = cond.mean(dim=1) if self.pooled else None
        return self.unet(x, t, encoder_hidden_states=cond, class_labels=pooled).sample

    def _inpaint_inputs(self, targets: list[PreparedTarget], device: torch.device, dtype: torch.dtype) -> list[Tensor]:
        """Mask and masked-source latents for a 9-channel UNet; generation targets get mask 1, source 0."""
        h, w = self.height, self.width
        masks = torch.stack([t.mask if t.mask is not None else torch.ones(1, h, w) for t in targets]).to(device, dtype)
        sources = torch.stack([t.source if t.source is not None else torch.zeros(3, h, w) for t in targets]).to(device, dtype)
        return self._inpaint_conditioning(sources, masks)

    def _inpaint_conditioning(self, sources: Tensor, masks: Tensor) -> list[Tensor]:
        with torch.no_grad():
            masked = self.encode(sources * (masks < 0.5), sample=False)
        return [self._latent_mask(masks), masked]

    def _latent_mask(self, masks: Tensor) -> Tensor:
        """A latent cell is editable when any of its pixels is."""
        return F.adaptive_max_pool2d(masks, (masks.shape[-2] // self.vae_factor, masks.shape[-1] // self.vae_factor))

    # --- VAE and text encoder --------------------------------------------------------------------
    def encode(self, pixels: Tensor, *, sample: bool) -> Tensor:
        """Pixels in [-1, 1] -> scaled latents (pixel-space UNets: the pixels, folded into
        ``3 * patch_size**2`` channels when ``patch_size`` > 1)."""
        return parts.vae_encode(self.vae, pixels, sample=sample, patch=self.patch)

    def decode(self, latents: Tensor) -> Tensor:
        """Scaled latents -> pixels in [0, 1]."""
        return parts.vae_decode(self.vae, latents, patch=self.patch)

    def encode_text(self, texts: list[str]) -> Tensor:
        """(len(texts), seq_len, D): the text encoder's last hidden states, padded to seq_len tokens."""
        enc = self.text_tokenizer(texts, padding="max_length", max_length=self.seq_len, truncation=True, return_tensors="pt")
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(enc.input_ids.to(device)).last_hidden_state

    # --- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, embeddings: Tensor, *, seeds: list[int | None] | None = None, sources: Tensor | None = None,
               masks: Tensor | None = None, num_inference_steps: int | None = None, guidance_scale: float | None = None,
               height: int | None = None, width: int | None = None, paste_back: bool | None = None,
               output: Literal["pixels", "latents"] = "pixels") -> Tensor:
        """Images (M, 3, H, W) in [0, 1] for conditioning ``embeddings`` (M, S, D).

        ``sources`` (M, 3, H, W) in [-1, 1] and ``masks`` (M, 1, H, W) in {0, 1} make it an edit: only
        masked pixels change (rows with an all-ones mask are plain generations). ``seeds[i]`` seeds
        row i's noise (default: the decoder's ``seed``). ``paste_back`` defaults to the decoder's setting.
        ``output="latents"`` returns the final scaled latents instead of decoding them."""
        steps = num_inference_steps or self.num_inference_steps
        guidance = self.guidance_scale if guidance_scale is None else guidance_scale
        h, w = height or self.height, width or self.width
        self.check_sampling(height=h, width=w, steps=steps, guidance=guidance)
        m = embeddings.shape[0]
        device, dtype = embeddings.device, self.unet.dtype
        seeds = seeds or [self.seed] * m
        generators = parts.generators(seeds)

        scheduler = parts.new_scheduler(self._scheduler_class, self._scheduler_config)
        scheduler.set_timesteps(steps, device=device)
        timesteps = scheduler.timesteps
        shape = (1, self.latent_channels, h // self.vae_factor, w // self.vae_factor)
        latents = torch.cat([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)
        latents = latents * scheduler.init_noise_sigma
        cfg = guidance > 1
        cond = embeddings.to(dtype)
        if cfg:
            cond = torch.cat([self.uncond.to(device, dtype).expand(m, -1, -1), cond])
        extra = parts.step_kwargs(scheduler, eta=self.eta, generator=generators)

        edit = masks is not None
        if self.inpainting and not edit:  # plain generation with an inpainting UNet: everything may change
            sources, masks = torch.zeros(m, 3, h, w), torch.ones(m, 1, h, w)
        blend = edit and not self.inpainting
        if masks is not None:
            if sources is None or sources.shape[0] != m or masks.shape[0] != m:
                raise ValueError(f"an edit needs sources and masks for each of the {m} rows")
            sources, masks = sources.to(device, dtype), masks.to(device, dtype)
            if self.inpainting:
                extra_inputs = [torch.cat([x] * 2) if cfg else x for x in self._inpaint_conditioning(sources, masks)]
            else:
                source_latents = self.encode(sources, sample=False)
                latent_mask = self._latent_mask(masks)
                blend_noise = torch.cat([torch.randn(shape, generator=g, dtype=dtype) for g in generators]).to(device)

        for i, t in enumerate(timesteps):
            x = torch.cat([latents] * 2) if cfg else latents
            x = scheduler.scale_model_input(x, t)
            if self.inpainting:
                x = torch.cat([x, *extra_inputs], dim=1)
            noise_pred = self.predict(x, t, cond)
            noise_pred = parts.guided(noise_pred, guidance) if cfg else noise_pred
            latents = scheduler.step(noise_pred, t, latents, **extra, return_dict=False)[0]
            if blend:
                known = source_latents
                if i < len(timesteps) - 1:
                    known = scheduler.add_noise(source_latents, blend_noise, timesteps[i + 1: i + 2])
                latents = (1 - latent_mask) * known + latent_mask * latents

        if output == "latents":
            return latents
        images = self.decode(latents).float()
        if edit and (self.paste_back if paste_back is None else paste_back):
            images = torch.where(masks.bool(), images, (sources.float() / 2 + 0.5).clamp(0, 1))
        return images

    def postprocess(self, out: DiffusionOutput, inp: DecoderInput) -> list[Image.Image]:
        """Sample one PIL image per occurrence; edits come back at their source image's own size."""
        b_idx = out.batch_index.tolist()
        rank = [b_idx[:i].count(b) for i, b in enumerate(b_idx)]  # occurrence number within its sample
        seeds = [None if self.seed is None else self.seed + k for k in rank]
        edits = self._edits(b_idx, rank, inp)
        sources = masks = None
        if edits:
            sources = torch.zeros(len(b_idx), 3, self.height, self.width)
            masks = torch.ones(len(b_idx), 1, self.height, self.width)
            for i, (b, full_mask) in edits.items():
                sources[i] = inp.pixels.pixels[b]
                masks[i] = self._mask(full_mask)
        images = self.sample(out.embeddings, seeds=seeds, sources=sources, masks=masks)
        result = [to_pil(im) for im in images]
        for i, (b, full_mask) in edits.items():
            result[i] = self._at_source_size(result[i], inp.pixels.originals[b], full_mask)
        return result

    def _edits(self, b_idx: list[int], rank: list[int], inp: DecoderInput) -> dict[int, tuple[int, np.ndarray]]:
        """occurrence -> (sample, mask) for the occurrences that edit their sample's image."""
        context = inp.context
        if self.mask_from is None or self.mask_from not in context or not isinstance(inp.pixels, SourceImages):
            return {}
        per_sample = context[self.mask_from]
        edits = {}
        for i, (b, k) in enumerate(zip(b_idx, rank)):
            masks = per_sample[b] if b < len(per_sample) else []
            if k < len(masks):
                edits[i] = (b, mask_array(masks[k]))
        return edits

    def _at_source_size(self, image: Image.Image, original: np.ndarray, mask: np.ndarray) -> Image.Image:
        h, w = original.shape[:2]
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BICUBIC)
        if not self.paste_back:
            return image
        full = self._mask(mask, (h, w))[0].numpy().astype(bool)
        return Image.fromarray(np.where(full[..., None], np.asarray(image), original))


def mask_array(mask: Any) -> np.ndarray:
    """A (H, W) bool array from a numpy/torch mask, a PIL image or an object with ``.mask`` (``types.Mask``)."""
    mask = getattr(mask, "mask", mask)
    if isinstance(mask, Image.Image):
        return np.asarray(mask.convert("L")) > 127
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    arr = arr.reshape(arr.shape[-2:]) if arr.ndim > 2 and int(np.prod(arr.shape[:-2])) == 1 else arr
    if arr.ndim != 2:
        raise ValueError(f"decoder diffusion: a mask must be (H, W), got shape {arr.shape}")
    return arr > 0.5 if arr.dtype != bool else arr


def to_pil(image: Tensor) -> Image.Image:
    """(3, H, W) in [0, 1] -> RGB PIL (rounded as diffusers' image processor does)."""
    arr = (image.detach().float().cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)

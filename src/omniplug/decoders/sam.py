"""Decoder ``sam``: a transformers ``SamModel`` turns each ``<seg>`` prompt into a mask (LISA's hand-off).

Per batch the SAM image encoder runs once per sample image (several ``<seg>`` of one sample share
its embedding). Each ``<seg>`` prompt — the LLM hidden state after the output projector, already
``prompt_dim`` wide (SAM's prompt-encoder width, 256 for every real SAM) — enters the mask decoder
as the one sparse prompt embedding; the dense prompt is SAM's learned "no mask" embedding; the
decoder returns a single mask. Its low-resolution logits are upsampled to SAM's padded input,
cropped to the resized image and upsampled to the original image size (LISA's postprocess), where
the loss is computed: ``bce_loss_weight * BCE + dice_loss_weight * DICE``, each the mean over masks.

``prompt_align_weight > 0`` adds a prompt-region alignment term (InfoNCE over the batch's non-empty
masks): a linear head maps each prompt onto its target region's descriptor — SAM's image embedding and
image-wide positional encoding averaged over the target mask, detached — against every other mask's
region. It gives the LLM a direct signal of *which* region a ``<seg>`` is about, independent of how
far the mask decoder has come: trained from scratch, the ``<seg>`` states can otherwise collapse to one
vector for every question (cosine ~0.998 between questions in the default world recipe's failed runs,
``bench/HISTORY.md``, probe seg_prompts), and the mask decoder then draws one generic blob.

Preprocessing is SAM's own (``SamImageProcessorPil``: longest side to SAM's input size,
ImageNet normalisation, zero padding to a square) and needs no torchvision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from transformers import SamImageProcessorPil, SamModel

from omniplug.base import Decoder
from omniplug.weights.hf_local import exported_entry, init_from_config, load_pretrained, local_checkpoint, save_folder
from omniplug.registry import DECODERS
from omniplug.types import DecoderInput, DecoderOutput, Mask


@dataclass
class SamPixels:
    """What ``SamDecoder.prepare_images`` returns for a batch: one image per sample, or (``prepare_image_groups``,
    ``frame_per_occurrence``) every image of every sample with ``rows[b]`` the rows of sample b's images."""

    pixel_values: Tensor  # (N, 3, S, S): resized, normalised, padded to SAM's square input
    input_sizes: list[tuple[int, int]]  # (h, w) of each image after resizing, before padding
    original_sizes: list[tuple[int, int]]  # (h, w) of each original image
    rows: list[list[int]] | None = None  # sample -> its images' rows; None: row b is sample b's (first) image

    def to(self, device: torch.device | str) -> "SamPixels":
        return SamPixels(self.pixel_values.to(device), self.input_sizes, self.original_sizes, self.rows)

    def image_rows(self, batch_index: Tensor) -> list[int]:
        """The image each occurrence reads: its sample's first image, or with ``rows`` the sample's k-th image for
        the sample's k-th occurrence (the last image for any beyond)."""
        samples = batch_index.tolist()
        if self.rows is None:
            return samples
        seen: dict[int, int] = {}
        out = []
        for b in samples:
            k = seen[b] = seen.get(b, -1) + 1
            out.append(self.rows[b][min(k, len(self.rows[b]) - 1)])
        return out


@dataclass
class SamOutput(DecoderOutput):
    mask_logits: list[Tensor]  # per occurrence: (H, W) logits at its image's original size
    low_res_logits: Tensor  # (M, h, w) mask-decoder output before upsampling
    scores: Tensor  # (M,) SAM's predicted IoU for each mask
    image_embeddings: Tensor | None = None  # (M, C, h, w) the image encoder's output each mask was decoded from
    prompts: Tensor | None = None  # (M, C) the sparse prompt each mask was decoded from
    input_sizes: list[tuple[int, int]] | None = None  # per mask: its image's (h, w) inside SAM's padded input
    # the same logits as ``mask_logits``, one (k, H, W) tensor per image size: (mask indices, logits). The loss
    # reads these, so a batch costs a few kernels per image size instead of a few per mask (GPU steps were
    # bound by those launches: bench/cuda/README.md)
    groups: list[tuple[list[int], Tensor]] | None = None
    frames: list[int] | None = None  # per mask: which of its sample's images it was decoded on (0: the first)


def sigmoid_bce_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Per-mask binary cross entropy, mean over pixels: (N, H, W) -> (N,)."""
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none").flatten(1).mean(1)


def dice_loss(logits: Tensor, target: Tensor, *, scale: float = 1000.0, eps: float = 1e-6) -> Tensor:
    """Per-mask DICE loss as LISA computes it: (N, H, W) -> (N,).

    ``1 - (2 * sum(p * t) / scale + eps) / ((sum(p) + sum(t)) / scale + eps)`` with ``p = sigmoid(logits)``;
    the scale keeps ``eps`` meaningful for large masks, and an empty target gives a loss that falls
    to 0 only as the prediction empties.
    """
    prob = logits.sigmoid().flatten(1)
    target = target.flatten(1)
    numerator = 2 * (prob / scale * target).sum(-1)
    denominator = (prob / scale).sum(-1) + (target / scale).sum(-1)
    return 1 - (numerator + eps) / (denominator + eps)


@DECODERS.register("sam")
class SamDecoder(Decoder):
    default_task = "seg"
    default_token = "<seg>"
    output_kind = "masks"
    needs_image = True
    checkpoint_modules = ("model",)

    def __init__(self, *, model_name_or_path: str, token: str = "<seg>", train_mask_decoder: bool = True,
                 freeze_image_encoder: bool = True, freeze_prompt_encoder: bool = True, mask_threshold: float = 0.0,
                 bce_loss_weight: float = 2.0, dice_loss_weight: float = 0.5, prompt_align_weight: float = 0.0,
                 prompt_align_temperature: float = 0.1, freeze: bool = False, from_scratch: bool = False,
                 frame_per_occurrence: bool = False) -> None:
        super().__init__()
        # occurrence k of <seg> in an answer reads the sample's k-th image (a clip's frame k) instead of its first:
        # "Segment the red circle in every frame." -> one mask per frame in one answer
        self.reads_every_image = frame_per_occurrence
        path = local_checkpoint(model_name_or_path, what="decoder sam")
        self.model: SamModel = init_from_config(SamModel, path) if from_scratch else load_pretrained(SamModel, path)
        if from_scratch:  # transformers initialises SAM for loading weights (near-zero activations); train from
            with torch.no_grad():  # PyTorch's default layer init and SAM's unit-scale Fourier features instead
                for module in self.model.modules():
                    if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
                        module.reset_parameters()
                self.model.shared_image_embedding.positional_embedding.normal_(std=1.0)
        self.processor = _processor(path, self.model)
        self.tokens = [token]
        self.prompt_dim = int(self.model.config.prompt_encoder_config.hidden_size)
        self.dense_width = int(self.model.config.vision_config.output_channels)
        if int(self.model.config.mask_decoder_config.hidden_size) != self.prompt_dim:
            raise ValueError(f"decoder sam: {path} has prompt-encoder width {self.prompt_dim} but mask-decoder width "
                             f"{self.model.config.mask_decoder_config.hidden_size}; not a usable SAM checkpoint")
        self.train_mask_decoder = train_mask_decoder
        self.freeze_image_encoder = freeze_image_encoder
        self.freeze_prompt_encoder = freeze_prompt_encoder
        self.mask_threshold = mask_threshold
        self.bce_loss_weight = bce_loss_weight
        self.dice_loss_weight = dice_loss_weight
        if prompt_align_weight < 0 or prompt_align_temperature <= 0:
            raise ValueError(f"decoder sam: prompt_align_weight must be >= 0 and prompt_align_temperature > 0, got "
                             f"{prompt_align_weight} and {prompt_align_temperature}")
        self.prompt_align_weight, self.prompt_align_temperature = prompt_align_weight, prompt_align_temperature
        # prompt -> (embedding, position) descriptor of its region; built only when used, so checkpoints without
        # the term keep their parameter set
        self.align_head = nn.Linear(self.prompt_dim, 2 * self.dense_width) if prompt_align_weight > 0 else None
        self.freeze = freeze

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        save_folder(directory, self.model, self.processor)
        return exported_entry(entry, ref)

    def set_trainable(self) -> None:
        self.model.requires_grad_(False)
        if self.align_head is not None:
            self.align_head.requires_grad_(not self.freeze)
        if self.freeze:
            return
        self.model.vision_encoder.requires_grad_(not self.freeze_image_encoder)
        # of the prompt encoder only the "no mask" dense embedding and the positional encoding (shared with the
        # image-wide grid) take part: points, boxes and mask inputs are never used
        self.model.prompt_encoder.no_mask_embed.requires_grad_(not self.freeze_prompt_encoder)
        self.model.shared_image_embedding.requires_grad_(not self.freeze_prompt_encoder)
        self.model.mask_decoder.requires_grad_(self.train_mask_decoder)
        # the single-mask path never uses the IoU head's loss or the multimask hypernetworks: keep them frozen
        # so that every trainable parameter gets a gradient (DDP's unused-parameter check)
        self.model.mask_decoder.iou_prediction_head.requires_grad_(False)
        self.model.mask_decoder.output_hypernetworks_mlps[1:].requires_grad_(False)

    # --- collate time ------------------------------------------------------------------------------
    def prepare_images(self, images: list[Image.Image]) -> SamPixels:
        if not images:
            raise ValueError("decoder sam: prepare_images() needs at least one image")
        rgb = [im.convert("RGB") for im in images]
        out = self.processor(images=rgb, return_tensors="pt")
        size = int(self.model.config.vision_config.image_size)
        if tuple(out["pixel_values"].shape[-2:]) != (size, size):
            raise ValueError(f"decoder sam: the checkpoint's preprocessor makes {tuple(out['pixel_values'].shape[-2:])} "
                             f"inputs but the image encoder expects {size}x{size}; fix preprocessor_config.json")
        return SamPixels(pixel_values=out["pixel_values"], input_sizes=[tuple(map(int, s)) for s in out["reshaped_input_sizes"]],
                         original_sizes=[(im.height, im.width) for im in rgb])

    def prepare_image_groups(self, groups: list[list[Image.Image]]) -> SamPixels:
        flat = [im for group in groups for im in group]
        pixels = self.prepare_images(flat)
        starts = np.cumsum([0] + [len(g) for g in groups])
        pixels.rows = [list(range(int(a), int(b))) for a, b in zip(starts[:-1], starts[1:])]
        return pixels

    def prepare_target(self, target, image: Image.Image | None) -> Tensor:
        mask = torch.as_tensor(np.asarray(target)).to(torch.float32)
        if mask.ndim != 2:
            raise ValueError(f"decoder sam: a mask target must be a 2-D (H, W) array, got shape {tuple(mask.shape)}")
        if image is not None and tuple(mask.shape) != (image.height, image.width):
            raise ValueError(f"decoder sam: mask target is {tuple(mask.shape)} but its image is {(image.height, image.width)}"
                             f" (h, w); masks must be at the image's original size")
        return mask

    # --- model ------------------------------------------------------------------------------------
    def image_embeddings(self, pixel_values: Tensor) -> Tensor:
        if self.freeze_image_encoder or self.freeze:
            with torch.no_grad():
                return self.model.vision_encoder(pixel_values).last_hidden_state
        return self.model.vision_encoder(pixel_values).last_hidden_state

    def forward(self, inp: DecoderInput) -> SamOutput:
        pixels = inp.pixels
        if not isinstance(pixels, SamPixels):
            raise ValueError("decoder sam: no images for this batch; every sample that asks for a mask needs an image "
                             "(the collator passes each sample's first image to SAM)")
        param = next(self.model.parameters())
        batch_index = inp.batch_index
        images = pixels.image_rows(batch_index)  # the image row each occurrence reads
        rows, inverse = torch.unique(torch.tensor(images, dtype=torch.long), return_inverse=True)  # one embedding per image
        embeds = self.image_embeddings(pixels.pixel_values[rows.to(pixels.pixel_values.device)].to(param.device, param.dtype))
        embeds = embeds[inverse.to(embeds.device)]  # (M, C, h, w): SAM repeats it per prompt the same way
        m = embeds.shape[0]
        positional = self.model.get_image_wide_positional_embeddings().expand(m, -1, -1, -1)
        sparse = inp.prompts[:, :1].to(param.dtype).unsqueeze(1)  # (M, point_batch=1, tokens=1, D)
        dense = self.model.prompt_encoder.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(m, -1, *embeds.shape[-2:])
        low_res, iou = self.model.mask_decoder(image_embeddings=embeds, image_positional_embeddings=positional,
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                               multimask_output=False)
        low_res = low_res[:, 0, 0]  # (M, h, w)
        padded = tuple(pixels.pixel_values.shape[-2:])
        logits: list[Tensor | None] = [None] * m
        groups = []
        for idx in _group_by([(pixels.input_sizes[b], pixels.original_sizes[b]) for b in images]):
            b = images[idx[0]]
            rows = low_res if len(idx) == m else low_res[torch.tensor(idx, device=low_res.device)]
            group = upsample_mask(rows, padded=padded, input_size=pixels.input_sizes[b],
                                  original_size=pixels.original_sizes[b])
            groups.append((idx, group))
            for i, view in zip(idx, group.unbind(0)):
                logits[i] = view
        return SamOutput(batch_index=batch_index, mask_logits=logits, low_res_logits=low_res, scores=iou[:, 0, 0],
                         image_embeddings=embeds, prompts=sparse[:, 0, 0],
                         input_sizes=[pixels.input_sizes[b] for b in images], groups=groups,
                         frames=[row - pixels.rows[b][0] for row, b in zip(images, batch_index.tolist())]
                         if pixels.rows is not None else None)

    def dense_features(self, out: SamOutput) -> Tensor | None:
        return out.image_embeddings

    def loss(self, out: SamOutput, targets: list[Tensor]) -> dict[str, Tensor]:
        if len(targets) != len(out.mask_logits):
            raise ValueError(f"decoder sam: {len(out.mask_logits)} predicted masks but {len(targets)} targets")
        bce = dice = out.low_res_logits.new_zeros((), dtype=torch.float32)
        for idx, logits in self._groups(out):
            shapes = {tuple(targets[i].shape) for i in idx}
            if shapes != {tuple(logits.shape[1:])}:
                raise ValueError(f"decoder sam: target masks {sorted(shapes)} vs predictions {tuple(logits.shape[1:])}")
            target = torch.stack([targets[i] for i in idx]).to(logits.device, torch.float32)
            bce = bce + sigmoid_bce_loss(logits.float(), target).sum()
            dice = dice + dice_loss(logits.float(), target).sum()
        n = max(len(targets), 1)
        losses = {"bce": self.bce_loss_weight * bce / n, "dice": self.dice_loss_weight * dice / n}
        if self.align_head is not None and out.prompts is not None:
            losses["align"] = self.prompt_align_weight * self.align_loss(out, targets)
        return losses

    @staticmethod
    def _groups(out: SamOutput) -> list[tuple[list[int], Tensor]]:
        """The output's masks as (indices, (k, H, W) logits) per image size; one per mask for an output
        built without groups (e.g. by hand)."""
        if out.groups is not None:
            return out.groups
        return [([i], logits[None]) for i, logits in enumerate(out.mask_logits)]

    def region_descriptors(self, out: SamOutput, targets: list[Tensor]) -> Tensor:
        """(M, 2C): SAM's image embedding and its image-wide positional encoding, each averaged over the
        target mask (placed like the image inside SAM's padded input, area-downsampled to the embedding grid)."""
        if out.image_embeddings is None or out.input_sizes is None:
            raise ValueError("decoder sam: region descriptors need the output's image_embeddings and input_sizes")
        embeds = out.image_embeddings.detach().float()
        grid = tuple(embeds.shape[-2:])
        side = int(self.model.config.vision_config.image_size)
        weight = embeds.new_empty((len(targets), *grid))
        for idx in _group_by([(tuple(t.shape), size) for t, size in zip(targets, out.input_sizes)]):
            h, w = out.input_sizes[idx[0]]
            t = torch.stack([targets[i] for i in idx]).to(embeds.device, torch.float32)[:, None]
            t = F.pad(F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False), (0, side - w, 0, side - h))
            weight[torch.tensor(idx, device=weight.device)] = F.adaptive_avg_pool2d(t, grid)[:, 0]
        weight = weight / weight.sum(dim=(1, 2), keepdim=True).clamp_min(1e-6)
        positional = self.model.get_image_wide_positional_embeddings()[0].detach().float()
        return torch.cat([torch.einsum("mchw,mhw->mc", embeds, weight), torch.einsum("chw,mhw->mc", positional, weight)], -1)

    def align_loss(self, out: SamOutput, targets: list[Tensor]) -> Tensor:
        """Symmetric InfoNCE between the projected prompts and the region descriptors of the batch's
        non-empty masks (each prompt's own region is its positive); 0 with fewer than two such masks."""
        nonempty = torch.zeros(len(targets), dtype=torch.bool)
        for idx in _group_by([tuple(t.shape) for t in targets]):  # one device sync per mask size, not per mask
            nonempty[idx] = torch.stack([targets[i] for i in idx]).flatten(1).any(1).cpu()
        keep = nonempty.nonzero().flatten().tolist()
        if len(keep) < 2:
            return out.prompts.sum() * 0.0
        idx = torch.tensor(keep, device=out.prompts.device)
        regions = F.normalize(self.region_descriptors(out, [targets[i] for i in keep]), dim=-1)
        z = F.normalize(self.align_head(out.prompts[idx].float()), dim=-1)
        logits = z @ regions.T / self.prompt_align_temperature
        labels = torch.arange(len(keep), device=logits.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    def validation_counts(self, out: SamOutput, targets: list[Tensor]) -> dict[str, tuple[float, float]]:
        """Thresholded masks against their targets: ``ciou`` (summed intersection / union), ``giou`` (mean
        per-mask IoU) and ``area_ratio`` (predicted / target pixels). Soft BCE and DICE can look fine while
        the thresholded masks are nearly empty (an under-confident decoder): ``area_ratio`` far below 1
        shows it."""
        inter = union = area = gold_area = iou = 0.0
        for logits, target in zip(out.mask_logits, targets):
            pred, gold = logits.detach() > self.mask_threshold, target.to(logits.device) > 0.5
            i, u = float((pred & gold).sum()), float((pred | gold).sum())
            inter, union, iou = inter + i, union + u, iou + (i / u if u else 1.0)
            area, gold_area = area + float(pred.sum()), gold_area + float(gold.sum())
        n = float(len(targets))
        return {"ciou": (inter, union), "giou": (iou, n), "area_ratio": (area, gold_area)}

    def postprocess(self, out: SamOutput, inp: DecoderInput | None = None) -> list[Mask]:
        frames = out.frames or [0] * len(out.mask_logits)
        return [Mask(mask=(logits > self.mask_threshold).detach().cpu().numpy(), score=float(score), image=frame)
                for logits, score, frame in zip(out.mask_logits, out.scores.detach().float().cpu(), frames)]


def upsample_mask(low_res: Tensor, *, padded: tuple[int, int], input_size: tuple[int, int],
                  original_size: tuple[int, int]) -> Tensor:
    """(..., h, w) low-res logits -> (..., H, W) logits at the original image size: upsample to SAM's padded
    input, drop the padding, resize to the original size (bilinear, as SAM and LISA do). Leading dimensions
    are masks of images of one size."""
    lead = low_res.shape[:-2]
    x = F.interpolate(low_res.reshape(-1, 1, *low_res.shape[-2:]).float(), size=padded, mode="bilinear",
                      align_corners=False)
    x = x[..., : input_size[0], : input_size[1]]
    x = F.interpolate(x, size=tuple(original_size), mode="bilinear", align_corners=False)
    return x.reshape(*lead, *x.shape[-2:])


def _group_by(keys: list) -> list[list[int]]:
    """Indices of equal keys, in first-seen order: [a, b, a] -> [[0, 2], [1]]."""
    groups: dict = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def _processor(path: Path, model: SamModel) -> SamImageProcessorPil:
    """The checkpoint's own preprocessing when it ships one, else SAM's defaults at its input size."""
    if (path / "preprocessor_config.json").is_file():
        return SamImageProcessorPil.from_pretrained(str(path))
    size = int(model.config.vision_config.image_size)
    return SamImageProcessorPil(size={"longest_edge": size}, pad_size={"height": size, "width": size})

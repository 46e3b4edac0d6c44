"""Decoder ``detr``: a transformers ``DetrForObjectDetection`` turns each ``<det>`` prompt into boxes.

The ``<det>`` hidden state, after the output projector, is ``d_model`` wide and becomes the *content* of
every object query (``decoder_inputs_embeds``); the queries still differ by DETR's learned query position
embeddings. So one prompt asks all queries the same question ("every circle", "the red square") and each
query answers with a box and a class, or with DETR's "no object" class. Referring detection is the same
path with one target box; class detection has as many as the image holds; an empty target (an object the
image does not have) trains every query towards "no object".

Loss: DETR's set loss from transformers (``HungarianMatcher`` with scipy + ``ImageLoss``): classification
cross entropy (the no-object class down-weighted by ``eos_coefficient``), L1 and generalised IoU on the
matched boxes; the matching costs and the loss weights are YAML keys. Boxes are normalised
``(cx, cy, w, h)`` relative to the image, as DETR predicts them; ``postprocess`` returns
:class:`omniplug.types.Box` in pixels of the original image, highest score first, as the checkpoint's
image processor's ``post_process_object_detection`` computes them.

The checkpoint folder is one ``save_pretrained`` of ``DetrForObjectDetection`` whose backbone is a
transformers config (e.g. ``ResNetConfig``, ``use_timm_backbone: false``): timm and torchvision are not
needed. ``preprocessor_config.json`` beside it (a ``DetrImageProcessor``) sets the input size; without one,
DETR's defaults (shortest side 800) apply.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from transformers import DetrForObjectDetection, DetrImageProcessorPil
from transformers.loss.loss_for_object_detection import HungarianMatcher, ImageLoss

from omniplug.base import Decoder
from omniplug.registry import DECODERS
from omniplug.types import Box, DecoderInput, DecoderOutput
from omniplug.weights.hf_local import exported_entry, init_from_config, load_pretrained, local_checkpoint, save_folder


@dataclass
class DetrPixels:
    """What ``DetrDecoder.prepare_images`` returns for a batch (one image per sample)."""

    pixel_values: Tensor  # (B, 3, H, W): resized, normalised, padded to the batch's largest image
    pixel_mask: Tensor  # (B, H, W): 1 on real pixels, 0 on padding
    original_sizes: list[tuple[int, int]]  # (h, w) of each original image

    def to(self, device: torch.device | str) -> "DetrPixels":
        return DetrPixels(self.pixel_values.to(device), self.pixel_mask.to(device), self.original_sizes)


@dataclass
class DetrTarget:
    """One ``<det>`` occurrence's boxes as the set loss takes them."""

    class_labels: Tensor  # (n,) long: ids in the checkpoint's ``id2label``
    boxes: Tensor  # (n, 4): normalised (cx, cy, w, h)


@dataclass
class DetrOutput(DecoderOutput):
    logits: Tensor  # (M, Q, num_labels + 1): the last class is "no object"
    pred_boxes: Tensor  # (M, Q, 4): normalised (cx, cy, w, h)
    original_sizes: list[tuple[int, int]]  # per occurrence: its image's (h, w)


@DECODERS.register("detr")
class DetrDecoder(Decoder):
    default_task = "det"
    default_token = "<det>"
    output_kind = "boxes"
    needs_image = True
    checkpoint_modules = ("model",)

    def __init__(self, *, model_name_or_path: str, token: str = "<det>", from_scratch: bool = False,
                 class_cost: float = 1.0, bbox_cost: float = 5.0, giou_cost: float = 2.0,
                 class_loss_weight: float = 1.0, bbox_loss_weight: float = 5.0, giou_loss_weight: float = 2.0,
                 eos_coefficient: float = 0.1, score_threshold: float = 0.5, max_boxes: int = 100,
                 freeze_backbone: bool = False, freeze: bool = False) -> None:
        super().__init__()
        path = local_checkpoint(model_name_or_path, what="decoder detr")
        _check_backbone(path)
        self.model: DetrForObjectDetection = (init_from_config(DetrForObjectDetection, path) if from_scratch
                                              else load_pretrained(DetrForObjectDetection, path))
        if (path / "preprocessor_config.json").is_file():
            self.processor = DetrImageProcessorPil.from_pretrained(str(path))
        else:
            self.processor = DetrImageProcessorPil()
        costs = {"class_cost": class_cost, "bbox_cost": bbox_cost, "giou_cost": giou_cost,
                 "class_loss_weight": class_loss_weight, "bbox_loss_weight": bbox_loss_weight,
                 "giou_loss_weight": giou_loss_weight, "eos_coefficient": eos_coefficient}
        bad = {k: v for k, v in costs.items() if v < 0}
        if bad or not any((class_cost, bbox_cost, giou_cost)):
            raise ValueError(f"decoder detr: matching costs and loss weights must be >= 0 and at least one cost > 0, "
                             f"got {bad or costs}")
        if not 0.0 <= score_threshold < 1.0 or max_boxes < 1:
            raise ValueError(f"decoder detr: score_threshold must be in [0, 1) and max_boxes >= 1, got "
                             f"{score_threshold} and {max_boxes}")
        config = self.model.config
        self.labels: dict[int, str] = {int(k): str(v) for k, v in config.id2label.items()}
        self.label_ids = {name: i for i, name in self.labels.items()}
        self.criterion = ImageLoss(matcher=HungarianMatcher(class_cost=class_cost, bbox_cost=bbox_cost, giou_cost=giou_cost),
                                   num_classes=int(config.num_labels), eos_coef=eos_coefficient,
                                   losses=["labels", "boxes", "cardinality"])
        self.loss_weights = {"ce": class_loss_weight, "bbox": bbox_loss_weight, "giou": giou_loss_weight}
        self.tokens = [token]
        self.prompt_dim = int(config.d_model)
        self.num_queries = int(config.num_queries)
        self.score_threshold, self.max_boxes = score_threshold, max_boxes
        self.freeze_backbone, self.freeze = freeze_backbone, freeze

    def export_pretrained(self, directory: Path, entry: dict[str, Any], *, ref: str) -> dict[str, Any]:
        save_folder(directory, self.model, self.processor)
        return exported_entry(entry, ref)

    def set_trainable(self) -> None:
        self.model.requires_grad_(not self.freeze)
        if self.freeze_backbone or self.freeze:
            self.model.model.backbone.requires_grad_(False)

    # --- collate time ------------------------------------------------------------------------------
    def prepare_images(self, images: list[Image.Image]) -> DetrPixels:
        if not images:
            raise ValueError("decoder detr: prepare_images() needs at least one image")
        rgb = [im.convert("RGB") for im in images]
        for im in rgb:
            if im.width < 1 or im.height < 1:
                raise ValueError(f"decoder detr: an image of size {im.width}x{im.height} has no pixels to detect in")
        out = self.processor(images=rgb, return_tensors="pt")
        return DetrPixels(pixel_values=out["pixel_values"], pixel_mask=out["pixel_mask"],
                          original_sizes=[(im.height, im.width) for im in rgb])

    def prepare_target(self, target, image: Image.Image | None) -> DetrTarget:
        """``target``: the boxes of one ``<det>`` (a list of :class:`Box`, possibly empty) in pixels of ``image``."""
        if isinstance(target, Box) or not isinstance(target, (list, tuple)):
            raise ValueError(f"decoder detr: a target is a list of Box (possibly empty) per <det>, got {type(target).__name__}")
        if image is None and target:
            raise ValueError("decoder detr: boxes need the sample's image (none was given)")
        ids, boxes = [], []
        for box in target:
            if not isinstance(box, Box):
                raise ValueError(f"decoder detr: targets must be omniplug.types.Box, got {type(box).__name__}")
            if box.label not in self.label_ids:
                raise ValueError(f"decoder detr: box label {box.label!r} is not a class of the checkpoint; its classes: "
                                 f"{', '.join(self.labels.values())} (set id2label in its config.json)")
            x0, y0, x1, y1 = box.xyxy
            w, h = image.width, image.height
            if not (x1 > x0 and y1 > y0):
                raise ValueError(f"decoder detr: degenerate box {box.xyxy} (needs x0 < x1 and y0 < y1)")
            if x0 < -1 or y0 < -1 or x1 > w + 1 or y1 > h + 1:
                raise ValueError(f"decoder detr: box {box.xyxy} lies outside its {w}x{h} image")
            x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))
            ids.append(self.label_ids[box.label])
            boxes.append([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
        return DetrTarget(class_labels=torch.tensor(ids, dtype=torch.long),
                          boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))

    # --- model ------------------------------------------------------------------------------------
    def queries(self, prompts: Tensor) -> Tensor:
        """(M, K, D) prompts -> (M, Q, D) object-query contents: the first prompt token, for every query."""
        return prompts[:, :1].expand(-1, self.num_queries, -1)

    def forward(self, inp: DecoderInput) -> DetrOutput:
        pixels = inp.pixels
        if not isinstance(pixels, DetrPixels):
            raise ValueError("decoder detr: no images for this batch; every sample that asks for boxes needs an image "
                             "(the collator passes each sample's first image to the detector)")
        param = next(self.model.parameters())
        rows = inp.batch_index.to(pixels.pixel_values.device)
        out = self.model(pixel_values=pixels.pixel_values[rows].to(param.device, param.dtype),
                         pixel_mask=pixels.pixel_mask[rows].to(param.device),
                         decoder_inputs_embeds=self.queries(inp.prompts.to(param.dtype)))
        return DetrOutput(batch_index=inp.batch_index, logits=out.logits, pred_boxes=out.pred_boxes,
                          original_sizes=[pixels.original_sizes[b] for b in inp.batch_index.tolist()])

    def loss(self, out: DetrOutput, targets: list[DetrTarget]) -> dict[str, Tensor]:
        if len(targets) != out.logits.shape[0]:
            raise ValueError(f"decoder detr: {out.logits.shape[0]} <det> predictions but {len(targets)} targets")
        device = out.logits.device
        labels = [{"class_labels": t.class_labels.to(device), "boxes": t.boxes.to(device, torch.float32)} for t in targets]
        terms = self.criterion({"logits": out.logits.float(), "pred_boxes": out.pred_boxes.float()}, labels)
        return {"ce": self.loss_weights["ce"] * terms["loss_ce"], "bbox": self.loss_weights["bbox"] * terms["loss_bbox"],
                "giou": self.loss_weights["giou"] * terms["loss_giou"]}

    def boxes(self, out: DetrOutput) -> list[list[Box]]:
        """Per occurrence: boxes scoring above ``score_threshold``, in pixels of the original image, best first."""
        probs = out.logits.detach().float().softmax(-1)[..., :-1]
        scores, labels = probs.max(-1)
        cx, cy, w, h = out.pred_boxes.detach().float().unbind(-1)
        corners = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        result = []
        for m, (height, width) in enumerate(out.original_sizes):
            scale = corners.new_tensor([width, height, width, height])
            keep = (scores[m] > self.score_threshold).nonzero().flatten()
            keep = keep[scores[m][keep].argsort(descending=True)][: self.max_boxes]
            xyxy = (corners[m][keep] * scale).tolist()
            result.append([Box(xyxy=tuple(b), label=self.labels.get(int(l), str(int(l))), score=float(s))
                           for b, l, s in zip(xyxy, labels[m][keep].tolist(), scores[m][keep].tolist())])
        return result

    def postprocess(self, out: DetrOutput, inp: DecoderInput | None = None) -> list[list[Box]]:
        return self.boxes(out)

    def validation_counts(self, out: DetrOutput, targets: list[DetrTarget]) -> dict[str, tuple[float, float]]:
        """``recall50``: target boxes some kept prediction covers with IoU >= 0.5; ``precision50``: kept
        predictions that cover some target box so; ``empty_ok``: empty-target occurrences with no box kept."""
        hits = n_gold = good = n_pred = empty_ok = n_empty = 0.0
        for predicted, target, (height, width) in zip(self.boxes(out), targets, out.original_sizes):
            gold = [_box_from_normalised(b, width, height) for b in target.boxes.tolist()]
            n_gold, n_pred = n_gold + len(gold), n_pred + len(predicted)
            hits += sum(any(g.iou(p) >= 0.5 for p in predicted) for g in gold)
            good += sum(any(p.iou(g) >= 0.5 for g in gold) for p in predicted)
            if not gold:
                n_empty += 1
                empty_ok += not predicted
        return {"recall50": (hits, n_gold), "precision50": (good, n_pred), "empty_ok": (empty_ok, n_empty)}


def _box_from_normalised(b: list[float], width: int, height: int) -> Box:
    cx, cy, w, h = b
    return Box(xyxy=((cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height))


def _check_backbone(path: Path) -> None:
    """A timm backbone needs timm (and pretrained weights from a hub): refuse it before loading."""
    config = json.loads((path / "config.json").read_text())
    if config.get("use_timm_backbone", False) or config.get("use_pretrained_backbone", False):
        raise ValueError(f"decoder detr: {path}/config.json asks for a timm or pretrained backbone "
                         f"(use_timm_backbone / use_pretrained_backbone); omniplug runs DETR with a transformers "
                         f"backbone config (e.g. ResNetConfig) and loads every weight from the folder: save the "
                         f"checkpoint with use_timm_backbone: false, use_pretrained_backbone: false")

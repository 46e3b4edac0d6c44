"""Scoring generated images: the world's analyser (objects, colours, sizes, positions read back
from the pixels) and, for real data, CLIP score and a CLIP-feature FID through torchmetrics.

``evaluate_generation(model, dataset)`` runs the one inference path (``OneModel.generate``) on a
``generation_pairs`` dataset and reports every score it can compute:

* ``world_exact`` / ``world_f1`` / ``world_precision`` / ``world_recall`` — when samples carry the
  world's ``scene`` (``generation.jsonl`` written by the world): the analyser parses each generated
  image and its objects are matched one to one with the scene's (category, colour, size, and centre
  within the analyser's default tolerance). ``world_accuracy(captions=...)`` scores attributes only;
* ``clip_score`` (100 x cosine of CLIP image and caption embeddings, floored at 0, as torchmetrics
  defines it; computed with transformers directly) and ``clip_fid`` (torchmetrics' Fréchet distance
  over CLIP image features of generated vs reference images; Inception weights are not available
  offline) — when ``clip_dir`` names a local CLIP checkpoint (``CLIPModel`` + ``CLIPProcessor``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class WorldScore:
    samples: int
    exact: float  # fraction of images whose objects all match (no missing, no extra)
    precision: float
    recall: float
    f1: float

    def as_dict(self) -> dict[str, float]:
        return {"world_exact": self.exact, "world_precision": self.precision, "world_recall": self.recall,
                "world_f1": self.f1, "world_samples": float(self.samples)}


def world_accuracy(images: Sequence[Image.Image | np.ndarray], *, scenes: Sequence[Any | None] | None = None,
                   captions: Sequence[str | None] | None = None, position_tolerance: float | None = None) -> WorldScore:
    """Analyse each image and match its objects with ``scenes[i]`` (a world ``Scene`` or its JSON;
    positions count) or else ``captions[i]`` (attributes only)."""
    from omniplug.data.world import analyser
    from omniplug.data.world.scene import Scene

    n = len(images)
    scenes = list(scenes) if scenes is not None else [None] * n
    captions = list(captions) if captions is not None else [None] * n
    if len(scenes) != n or len(captions) != n:
        raise ValueError(f"world_accuracy: {n} images but {len(scenes)} scenes and {len(captions)} captions")
    tp = fp = fn = exact = 0
    for image, scene, caption in zip(images, scenes, captions):
        if isinstance(scene, dict):
            scene = Scene.from_json(scene)
        arr = analyser.to_array(image)
        if scene is not None:
            tol = analyser.default_tolerance(arr.shape[1]) if position_tolerance is None else position_tolerance
            expected, tolerance = analyser.expected_from_scene(scene), tol
        elif caption:
            expected, tolerance = analyser.expected_from_caption(caption), None
        else:
            raise ValueError("world_accuracy: every image needs a scene or a caption to compare with")
        s = analyser.score_objects(detected=analyser.analyse(arr), expected=expected, position_tolerance=tolerance)
        tp, fp, fn, exact = tp + s.tp, fp + s.fp, fn + s.fn, exact + s.exact
    total = analyser.MatchScore(tp=tp, fp=fp, fn=fn)
    return WorldScore(samples=n, exact=exact / max(n, 1), precision=total.precision, recall=total.recall, f1=total.f1)


def _clip(clip_dir: str):
    from transformers import CLIPModel, CLIPProcessor

    from omniplug.weights.hf_local import local_checkpoint

    path = local_checkpoint(clip_dir, what="generation eval: clip_dir")
    return CLIPModel.from_pretrained(str(path)).eval(), CLIPProcessor.from_pretrained(str(path))


def _uint8_chw(images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.asarray(Image.fromarray(np.asarray(im)).convert("RGB")).copy()).permute(2, 0, 1)
                        for im in images])


def _features(out) -> torch.Tensor:
    """transformers 5 returns the projected embedding as ``pooler_output`` of an output object."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


@torch.no_grad()
def clip_score(images: Sequence[Image.Image | np.ndarray], captions: Sequence[str], *, clip_dir: str,
               batch_size: int = 32) -> float:
    """Mean CLIP score, ``100 * max(cos(image, caption), 0)`` (torchmetrics' definition), computed with
    transformers' ``CLIPModel`` directly: torchmetrics 1.9's ``CLIPScore`` expects transformers 4's
    tensor-returning ``get_image_features``."""
    if len(images) != len(captions):
        raise ValueError(f"clip_score: {len(images)} images but {len(captions)} captions")
    model, processor = _clip(clip_dir)
    scores = []
    for i in range(0, len(images), batch_size):
        ims = [Image.fromarray(np.asarray(im)).convert("RGB") for im in images[i:i + batch_size]]
        enc = processor(text=list(captions[i:i + batch_size]), images=ims, return_tensors="pt", padding=True,
                        truncation=True)
        img = F.normalize(_features(model.get_image_features(pixel_values=enc["pixel_values"])), dim=-1)
        txt = F.normalize(_features(model.get_text_features(input_ids=enc["input_ids"],
                                                            attention_mask=enc.get("attention_mask"))), dim=-1)
        scores.append((100 * (img * txt).sum(-1)).clamp(min=0))
    return float(torch.cat(scores).mean())


class _ClipImageFeatures(torch.nn.Module):
    """uint8 (N, 3, H, W) -> CLIP image embeddings: the feature extractor FID runs on."""

    def __init__(self, clip_dir: str) -> None:
        super().__init__()
        self.model, self.processor = _clip(clip_dir)
        self.num_features = int(self.model.config.projection_dim)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = self.processor(images=[im.permute(1, 2, 0).cpu().numpy() for im in images], return_tensors="pt").pixel_values
        return _features(self.model.get_image_features(pixel_values=pixels.to(self.model.device))).double()


def clip_fid(generated: Sequence[Image.Image | np.ndarray], reference: Sequence[Image.Image | np.ndarray], *,
             clip_dir: str) -> float:
    """Fréchet distance between CLIP image features of generated and reference images (torchmetrics FID
    with a CLIP feature extractor). Needs at least two images on each side."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if min(len(generated), len(reference)) < 2:
        raise ValueError("clip_fid needs at least 2 generated and 2 reference images")
    metric = FrechetInceptionDistance(feature=_ClipImageFeatures(clip_dir))
    metric.update(_uint8_chw(reference), real=True)
    metric.update(_uint8_chw(generated), real=False)
    return float(metric.compute())


@torch.no_grad()
def evaluate_generation(model, dataset, *, task: str = "gen", batch_size: int = 4, max_samples: int | None = None,
                        max_length: int = 512, clip_dir: str | None = None, force_tokens: bool = True,
                        max_new_tokens: int = 16) -> dict[str, float]:
    """Generate an image for each sample's prompt and score it (see the module docstring).

    ``force_tokens`` starts every answer with the decoder's trigger tokens (``answer_prefix``), so the
    image quality is measured even when the LLM does not (yet) emit them; ``token_rate`` reports how
    often it does when not forced."""
    from omniplug.data.collate import Collator

    decoder = model.decoders[task]
    n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
    collate = Collator(model, max_length=max_length, for_generation=True)
    images: list[Image.Image | None] = []
    samples = [dataset[i] for i in range(n)]
    was_training = model.training
    model.eval()
    try:
        for start in range(0, n, batch_size):
            chunk = samples[start:start + batch_size]
            batch = collate(chunk).to(next(model.parameters()).device)
            gen = model.generate(batch, max_new_tokens=max_new_tokens,
                                 answer_prefix="".join(decoder.tokens) if force_tokens else None)
            images.extend(items[0] if items else None for items in gen.decoder_outputs.get(task, [[]] * len(chunk)))
    finally:
        model.train(was_training)
    made = [i for i, im in enumerate(images) if im is not None]
    result: dict[str, float] = {"samples": float(n), "token_rate": len(made) / max(n, 1)}
    if not made:
        return result
    scenes = [samples[i].meta.get("scene") for i in made]
    captions = [samples[i].meta.get("caption") for i in made]
    if all(s is not None for s in scenes):  # world data: its analyser reads the images back
        result.update(world_accuracy([images[i] for i in made], scenes=scenes).as_dict())
    if clip_dir and all(captions):
        result["clip_score"] = clip_score([images[i] for i in made], captions, clip_dir=clip_dir)
        refs = [t.image for i in made for t in samples[i].targets.get(task, [])[:1]]
        if len(refs) == len(made) and len(made) >= 2:
            result["clip_fid"] = clip_fid([images[i] for i in made], refs, clip_dir=clip_dir)
    return result

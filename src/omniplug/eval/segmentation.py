"""Segmentation metrics (LISA's gIoU / cIoU) and the loop that computes them for a model.

Counting unit: one mask target = one ``<seg>`` in an answer (``n`` counts these).

* gIoU = mean over masks of IoU(prediction, target); an empty prediction of an empty target
  (an absent object correctly left unmasked) scores 1.0, as in LISA's evaluation.
* cIoU = total intersection / total union over all masks of the set (1.0 when both are 0).
* ``overall`` pools the masks of every dataset (mean IoU over all masks, summed I / summed U).

Modes:

* ``teacher_forced`` (LISA's evaluation, the default): the ground-truth conversation is fed
  as it is and each ``<seg>`` of the reference answer yields a mask; measures the decoder and
  the hand-off, not whether the LLM would have written ``<seg>``.
* ``generated``: the model answers the last question greedily; the masks of the ``<seg>`` it
  writes are paired in order with the targets of the reference's last answer; a missing
  prediction counts as an empty mask, extra ones are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import torch

from omniplug.data.collate import Collator
from omniplug.data.sample import Sample
from omniplug.types import Mask

Mode = Literal["teacher_forced", "generated"]
MODES: tuple[str, ...] = ("teacher_forced", "generated")


@dataclass
class SegCounts:
    """Running sums for gIoU / cIoU; ``merge`` pools sets."""

    n: int = 0
    iou_sum: float = 0.0
    intersection: int = 0
    union: int = 0

    def add(self, pred: Any, target: Any) -> float:
        inter, union, iou = mask_iou(pred, target)
        self.n += 1
        self.iou_sum += iou
        self.intersection += inter
        self.union += union
        return iou

    def merge(self, other: "SegCounts") -> "SegCounts":
        return SegCounts(n=self.n + other.n, iou_sum=self.iou_sum + other.iou_sum,
                         intersection=self.intersection + other.intersection, union=self.union + other.union)

    @property
    def giou(self) -> float:
        return self.iou_sum / self.n if self.n else 0.0

    @property
    def ciou(self) -> float:
        return self.intersection / self.union if self.union else (1.0 if self.n else 0.0)

    def as_dict(self) -> dict[str, float | int]:
        return {"giou": self.giou, "ciou": self.ciou, "n": self.n}


def mask_iou(pred: Any, target: Any) -> tuple[int, int, float]:
    """(intersection, union, IoU) of two boolean masks of the same shape; IoU of two empty masks is 1.0."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(target, dtype=bool)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and target {t.shape} masks differ in shape")
    inter = int(np.logical_and(p, t).sum())
    union = int(np.logical_or(p, t).sum())
    return inter, union, (inter / union if union else 1.0)


def summarise(per_dataset: Mapping[str, SegCounts]) -> dict[str, dict[str, float | int]]:
    """``{dataset: {giou, ciou, n}, ..., "overall": {giou, ciou, n}}``."""
    out = {name: c.as_dict() for name, c in per_dataset.items()}
    total = SegCounts()
    for c in per_dataset.values():
        total = total.merge(c)
    out["overall"] = total.as_dict()
    return out


def mask_task(model) -> str:
    """The model's one decoder task whose outputs are masks."""
    tasks = [t for t, d in model.decoders.items() if getattr(d, "output_kind", "") == "masks"]
    if len(tasks) != 1:
        raise ValueError(f"segmentation eval needs exactly one mask decoder; this model has {tasks or 'none'} "
                         f"(decoders: {list(model.decoders)})")
    return tasks[0]


@torch.no_grad()
def teacher_forced_masks(model, batch, task: str) -> list[list[Mask]]:
    """Masks of every trigger occurrence in the given (full) conversations, per sample."""
    embeds, features = model.embed_inputs(batch.input_ids, batch.pixel_values)
    hidden = model.llm(embeds, batch.attention_mask).hidden_states
    b_idx, pos = model.trigger_occurrences(batch.input_ids, task)
    bsz = batch.input_ids.shape[0]
    per_sample: list[list[Mask]] = [[] for _ in range(bsz)]
    if len(b_idx):
        decoder = model.decoders[task]
        inp = model.decoder_input(task, hidden, b_idx, pos, features=features, pixels=batch.decoder_pixels.get(task),
                                  image_sizes=batch.image_sizes, batch_size=bsz)
        for b, item in zip(b_idx.tolist(), decoder.postprocess(decoder(inp), inp)):
            per_sample[b].append(item)
    return per_sample


def _last_answer_targets(sample: Sample, task: str, token: str) -> list[Any]:
    targets = list(sample.targets.get(task, []))
    if not sample.turns or sample.turns[-1].role != "assistant":
        return []
    k = sample.turns[-1].text.count(token)
    return targets[len(targets) - k:] if k else []


def segmentation_counts(model, samples: Iterable[Sample], *, mode: Mode = "teacher_forced", batch_size: int = 2,
                        max_length: int = 512, max_new_tokens: int = 32, task: str | None = None) -> SegCounts:
    """gIoU/cIoU sums of ``model`` on ``samples`` (any iterable of Sample, e.g. a dataset)."""
    if mode not in MODES:
        raise ValueError(f"unknown eval mode {mode!r}; choose one of {', '.join(MODES)}")
    task = task or mask_task(model)
    token = model.decoders[task].tokens[0]
    collate = Collator(model, max_length=max_length, for_generation=(mode == "generated"))
    device = next(model.parameters()).device
    counts = SegCounts()
    was_training = model.training
    model.eval()
    try:
        for chunk in _chunks(samples, batch_size):
            batch = collate(chunk).to(device)
            if mode == "teacher_forced":
                predictions = teacher_forced_masks(model, batch, task)
                targets = [list(s.targets.get(task, [])) for s in chunk]
            else:
                gen = model.generate(batch, max_new_tokens=max_new_tokens)
                predictions = gen.decoder_outputs.get(task, [[] for _ in chunk])
                targets = [_last_answer_targets(s, task, token) for s in chunk]
            for preds, tgts in zip(predictions, targets):
                for i, target in enumerate(tgts):
                    pred = preds[i].mask if i < len(preds) else np.zeros(np.shape(target), dtype=bool)
                    counts.add(pred, target)
    finally:
        model.train(was_training)
    return counts


def evaluate_segmentation(model, datasets: Mapping[str, Sequence[Sample]], *, mode: Mode = "teacher_forced",
                          batch_size: int = 2, max_samples: int | None = None, max_length: int = 512,
                          max_new_tokens: int = 32, task: str | None = None) -> dict[str, dict[str, float | int]]:
    """Per-dataset and overall gIoU / cIoU: ``{name: {giou, ciou, n}, "overall": {...}}``.

    The training loop calls this for ``trainer.evaluate`` / periodic evaluation."""
    per: dict[str, SegCounts] = {}
    for name, dataset in datasets.items():
        n = len(dataset) if max_samples is None else min(len(dataset), max_samples)
        per[name] = segmentation_counts(model, (dataset[i] for i in range(n)), mode=mode, batch_size=batch_size,
                                        max_length=max_length, max_new_tokens=max_new_tokens, task=task)
    return summarise(per)


def _chunks(items: Iterable[Sample], size: int) -> Iterable[list[Sample]]:
    if size < 1:
        raise ValueError(f"batch_size must be >= 1, got {size}")
    chunk: list[Sample] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk

"""Typed values passed between stages. No tuples, no dict soup."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class ImageFeatures:
    """What an encoder produces for a batch of images."""

    tokens: Tensor  # (num_images, num_tokens, dim): what the input projector sees
    dense: Tensor | None = None  # (num_images, dim, h, w) feature map, when the encoder has one


@dataclass
class LLMOutput:
    logits: Tensor  # (B, T, vocab)
    hidden_states: Tensor  # (B, T, hidden): last layer
    loss: Tensor | None = None


@dataclass
class GenerateOutput:
    sequences: Tensor  # (B, T_new): generated ids only, padded with pad id
    lengths: Tensor  # (B,): number of real generated ids per row
    # with generate(return_hidden=True): the last layer's hidden states computed while generating, at the
    # prompt's positions then the generated tokens' (the last generated token is never fed back, so it has
    # none): (B, T_prompt + T_new - 1, hidden); and the logits that chose each generated token: (B, T_new, vocab)
    hidden_states: Tensor | None = None
    logits: Tensor | None = None


@dataclass
class DecoderInput:
    """Everything a decoder gets: one prompt per task-token occurrence, in reading order.

    ``prompts[i]`` came from sample ``batch_index[i]``; occurrences of one sample keep the order
    in which their trigger tokens appear in the text.
    """

    prompts: Tensor  # (M, K, D): M occurrences, K trigger tokens per occurrence, D prompt dim
    batch_index: Tensor  # (M,) long
    batch_size: int
    image_features: ImageFeatures | None = None  # the shared encoder's output for the batch
    pixels: Any = None  # the decoder's own prepared images (see Decoder.prepare_images), per sample
    image_sizes: list[tuple[int, int]] | None = None  # original (height, width) per sample
    # text decoders (Decoder.answer_length = S > 0): the S tokens after each trigger run (-1 past the
    # end of the text) and the logits that predicted them (teacher-forced in training, generated at inference)
    answer_ids: Tensor | None = None  # (M, S) long
    answer_logits: Tensor | None = None  # (M, S, vocab)
    # at inference: postprocessed outputs of the decoders that ran before this one on the same batch
    # (task -> per sample -> items, decoders run in one_model.decoders order), e.g. <seg> masks for an edit
    context: dict[str, list[list[Any]]] = field(default_factory=dict)


@dataclass
class DecoderOutput:
    """Base for decoder outputs; each decoder defines its own subclass."""

    batch_index: Tensor  # (M,)


@dataclass
class ModelOutput:
    loss: Tensor
    lm_loss: Tensor | None
    decoder_losses: dict[str, Tensor] = field(default_factory=dict)  # "seg/bce" -> value (weighted)
    logits: Tensor | None = None
    decoder_outputs: dict[str, DecoderOutput] = field(default_factory=dict)

    def scalars(self) -> dict[str, float]:
        out = {"loss": float(self.loss.detach())}
        if self.lm_loss is not None:
            out["lm_loss"] = float(self.lm_loss.detach())
        out.update({k: float(v.detach()) for k, v in self.decoder_losses.items()})
        return out


@dataclass
class Batch:
    """A collated batch. Built by ``omniplug.data.collate``; consumed by ``OneModel``.

    ``targets[task]`` lists one target per trigger occurrence, flattened in batch order then text
    order, so that it lines up with ``DecoderInput.prompts``.
    """

    input_ids: Tensor  # (B, T)
    attention_mask: Tensor  # (B, T)
    labels: Tensor | None = None  # (B, T), -100 where no loss
    pixel_values: Tensor | None = None  # (num_images, C, H, W) for the shared encoder
    image_sizes: list[tuple[int, int]] | None = None
    decoder_pixels: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, list[Any]] = field(default_factory=dict)
    # dense supervision (omniplug.heads.dense): (B, H, W) class labels of each sample's first image (-100 unlabelled)
    # and the row of that image in pixel_values (-1: the sample has none)
    label_maps: Tensor | None = None
    first_image_rows: Tensor | None = None

    def to(self, device: torch.device | str) -> "Batch":
        def move(x: Any) -> Any:
            if isinstance(x, Tensor):
                return x.to(device)
            if isinstance(x, list):
                return [move(v) for v in x]
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            return x

        return Batch(
            input_ids=move(self.input_ids),
            attention_mask=move(self.attention_mask),
            labels=move(self.labels),
            pixel_values=move(self.pixel_values),
            image_sizes=self.image_sizes,
            decoder_pixels=move(self.decoder_pixels),
            targets=move(self.targets),
            label_maps=move(self.label_maps),
            first_image_rows=move(self.first_image_rows),
        )


@dataclass
class Mask:
    mask: Any  # numpy bool array (H, W)
    score: float
    label: str | None = None
    image: int = 0  # which of the request's images it is on (a frame_per_occurrence decoder: frame k for mask k)


@dataclass
class Box:
    """One box in pixels of its (original) image, corners (x0, y0, x1, y1) with x0 < x1 and y0 < y1: a
    detection (with the decoder's score) or an annotation (score 1). ``label`` is a class name."""

    xyxy: tuple[float, float, float, float]
    label: str | None = None
    score: float = 1.0

    def area(self) -> float:
        x0, y0, x1, y1 = self.xyxy
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)

    def iou(self, other: "Box") -> float:
        ax0, ay0, ax1, ay1 = self.xyxy
        bx0, by0, bx1, by1 = other.xyxy
        inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
        union = self.area() + other.area() - inter
        return inter / union if union > 0 else 0.0

    def to_json(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.xyxy], "label": self.label, "score": round(float(self.score), 4)}


@dataclass
class Response:
    """The one typed answer to an inference request."""

    text: str
    masks: list[Mask] = field(default_factory=list)
    images: list[Any] = field(default_factory=list)  # PIL images
    boxes: list[Box] = field(default_factory=list)
    actions: list[Any] = field(default_factory=list)
    videos: list[list[Any]] = field(default_factory=list)  # clips: each a list of PIL frames
    timings: dict[str, float] = field(default_factory=dict)
    extra: dict[str, list[Any]] = field(default_factory=dict)  # outputs of decoders of other kinds

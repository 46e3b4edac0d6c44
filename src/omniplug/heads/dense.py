"""Dense perception supervision: per-pixel class labels teach a feature map what is where.

A task token's loss reaches a vision tower through one hidden state or one mask per example;
a label map says, for every pixel, which class is there. Where a dataset has such maps (the
world writes a semantic map for every scene; ADE20K-style datasets have them too), a ``DenseHead``
(a 1x1 convolution) reads a module's feature map, its logits are upsampled bilinearly to the
label map's size, and cross entropy over the labelled pixels is added to the training loss.

A label map may have several channels, (L, H, W), each a different labelling of the same pixels
(the world gives category, part and colour): ``dense_classes`` is then a list with one class count
per channel, the head predicts every channel and the loss is the sum of their cross entropies.
Separate channels keep the code factorised (colour and shape apart), which is what lets a
combination never seen in training be recognised.

Which feature maps: ``"encoder"`` is the shared encoder's ``ImageFeatures.dense`` (e.g. CLIP's
patch grid); a decoder task name (e.g. ``"seg"``) is that decoder's ``dense_features`` (SAM's image
embeddings). Configured in ``one_model``::

    dense_classes: [12, 8, 9]                      # per channel; label values 0..n-1, negative = unlabelled
    dense_loss_weights: {encoder: 1.0, seg: 1.0}

The heads exist only for training; inference never runs them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

IGNORE = -100  # label value of unlabelled pixels in a collated batch


class DenseLabelError(ValueError):
    """A label map that does not fit the configured classes or its image."""


class DenseHead(nn.Module):
    def __init__(self, width: int, num_classes: int | list[int] | tuple[int, ...]) -> None:
        super().__init__()
        self.num_classes = [int(num_classes)] if isinstance(num_classes, int) else [int(c) for c in num_classes]
        if width < 1 or not self.num_classes or min(self.num_classes) < 2:
            raise ValueError(f"DenseHead needs width >= 1 and every class count >= 2, got {width}, {num_classes}")
        self.proj = nn.Conv2d(width, sum(self.num_classes), kernel_size=1)

    def forward(self, features: Tensor) -> Tensor:
        """(n, width, h, w) features -> (n, sum(num_classes), h, w) logits, channel after channel."""
        if features.ndim != 4 or features.shape[1] != self.proj.in_channels:
            raise DenseLabelError(f"dense head expects (n, {self.proj.in_channels}, h, w) features, got {tuple(features.shape)}")
        return self.proj(features.to(self.proj.weight.dtype))

    def loss(self, features: Tensor, labels: Tensor) -> Tensor | None:
        """Sum over channels of the mean cross entropy over labelled pixels; ``None`` when no pixel is
        labelled. ``labels``: (n, H, W) or (n, L, H, W) long, ``IGNORE`` where unlabelled."""
        if labels.shape[0] != features.shape[0]:
            raise DenseLabelError(f"{features.shape[0]} feature maps but {labels.shape[0]} label maps")
        if labels.ndim == 3:
            labels = labels.unsqueeze(1)
        if labels.ndim != 4 or labels.shape[1] != len(self.num_classes):
            raise DenseLabelError(f"label maps have {labels.shape[1] if labels.ndim == 4 else '?'} channel(s) "
                                  f"(shape {tuple(labels.shape)}) but one_model.dense_classes lists {len(self.num_classes)}: "
                                  f"{self.num_classes}; give one class count per label-map channel")
        logits = F.interpolate(self(features), size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
        total = None
        for c, (chunk, n_cls) in enumerate(zip(logits.split(self.num_classes, dim=1), self.num_classes)):
            target = labels[:, c]
            valid = target != IGNORE
            if not bool(valid.any()):
                continue
            top, low = int(target[valid].max()), int(target[valid].min())
            if top >= n_cls or low < 0:
                raise DenseLabelError(f"label-map channel {c} holds class {top if top >= n_cls else low} but "
                                      f"one_model.dense_classes gives it {n_cls} classes; set dense_classes to the "
                                      f"number of classes of each channel of the dataset's label maps")
            value = F.cross_entropy(chunk.float(), target, ignore_index=IGNORE)
            total = value if total is None else total + value
        return total


def collate_label_maps(maps: list) -> Tensor | None:
    """Per-sample (H, W) or (L, H, W) int arrays or None -> (B, [L,] H, W) long with ``IGNORE`` for
    missing samples and negative values; ``None`` when no sample has a map. Every map must have the
    same shape."""
    present = [m for m in maps if m is not None]
    if not present:
        return None
    shape = tuple(torch.as_tensor(present[0]).shape)
    out = torch.full((len(maps), *shape), IGNORE, dtype=torch.long)
    for i, m in enumerate(maps):
        if m is None:
            continue
        t = torch.as_tensor(np.asarray(m)).long()
        if t.ndim not in (2, 3) or tuple(t.shape) != shape:
            raise DenseLabelError(f"label maps in one batch must all be {shape} ([L,] H, W); sample {i} has {tuple(t.shape)}")
        out[i] = torch.where(t < 0, torch.full_like(t, IGNORE), t)
    return out

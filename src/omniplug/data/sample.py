"""The typed unit every dataset reader yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from omniplug.data.conversation import Turn


@dataclass
class Sample:
    """One training/eval example: a conversation about zero or more images, plus decoder targets.

    ``targets[task]`` holds one raw target per occurrence of that task's trigger tokens in the
    assistant turns, in text order (e.g. one HxW bool mask per ``<seg>``).
    """

    turns: list[Turn]
    images: list[Image.Image] = field(default_factory=list)
    targets: dict[str, list[Any]] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # dataset name, ids, labels... (not used by the model)
    # dense class labels of the first image, (H, W) ints, negative = unlabelled; read only by dense heads
    # (one_model.dense_classes, omniplug.heads.dense)
    label_map: Any = None

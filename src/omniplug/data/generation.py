"""Readers for image generation and language-driven editing data (JSON lines).

``generation_pairs`` reads ``{"image": path, "caption": text}`` lines (extra keys are kept in
``Sample.meta``): the user asks "Draw {caption}." and the assistant answers with the generation
tokens ``<gen_0> .. <gen_{K-1}>``; the target is the image (and its caption, for the alignment loss).

``editing_triples`` reads ``{"source": path, "instruction": text, "target": path, "mask": path}``
lines: the user gives the source image and the instruction; the assistant answers with ``<seg>``
(the region, target: the mask) and the generation tokens (target: the edited image inside the
mask). Paths are relative to ``data_dir``. The procedural world writes both files
(``generation.jsonl``, ``editing.jsonl``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS

DRAW_PROMPTS = ("Draw {caption}.", "Generate an image of {caption}.", "Make a picture showing {caption}.")


@dataclass
class GenerationTarget:
    """The raw target of one generation occurrence (what ``diffusion.prepare_target`` takes)."""

    image: Image.Image | np.ndarray  # the image to generate (for edits: the edited image)
    caption: str | None = None  # text for the alignment loss (when the decoder has a text encoder)
    mask: np.ndarray | None = None  # (H, W) bool: for edits, the region that may change
    focus: np.ndarray | None = None  # (H, W) bool: the pixels the description is about (diffusion focus_weight)


def gen_tokens(token: str, num_tokens: int) -> list[str]:
    """The K trigger tokens of a generation decoder: ``<gen>`` for K=1, else ``<gen_0> .. <gen_{K-1}>``."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    if not (token.startswith("<") and token.endswith(">")):
        raise ValueError(f"token must look like '<gen>', got {token!r}")
    if num_tokens == 1:
        return [token]
    return [f"{token[:-1]}_{i}>" for i in range(num_tokens)]


def draw_prompt(caption: str, prompts: tuple[str, ...] = DRAW_PROMPTS, index: int = 0) -> str:
    """The user turn asking for ``caption``: "A red circle." -> "Draw a red circle." (phrasing ``index``)."""
    text = caption.strip().rstrip(".")
    text = text[:1].lower() + text[1:] if text[:2].istitle() else text  # "A car" -> "a car"; "SD art" stays
    return prompts[index % len(prompts)].format(caption=text)


def read_jsonl(path: Path, *, required: tuple[str, ...]) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (write a world split with `omniplug world generate`, or point data_dir "
                                f"at a folder holding {path.name})")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: not valid JSON: {exc}") from None
        missing = [k for k in required if k not in rec]
        if missing:
            raise ValueError(f"{path}:{n}: missing key(s) {missing}; each line needs {list(required)}")
        records.append(rec)
    return records


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L")) > 127


@DATASETS.register("generation_pairs")
class GenerationPairs(Dataset):
    def __init__(self, *, data_dir: str, file: str = "generation.jsonl", prompts: tuple[str, ...] = DRAW_PROMPTS,
                 answer: str = "{gen}", token: str = "<gen>", num_tokens: int = 4, task: str = "gen",
                 max_samples: int | None = None) -> None:
        self.root = Path(data_dir).expanduser()
        self.records = read_jsonl(self.root / file, required=("image", "caption"))[:max_samples]
        if not prompts or not all("{caption}" in p for p in prompts):
            raise ValueError("generation_pairs: every prompt must contain {caption}")
        if "{gen}" not in answer:
            raise ValueError("generation_pairs: answer must contain {gen} (where the generation tokens go)")
        self.prompts, self.answer, self.task = tuple(prompts), answer, task
        self.gen = "".join(gen_tokens(token, num_tokens))  # a run: no spaces between

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        caption = str(rec["caption"]).strip()
        prompt = draw_prompt(caption, self.prompts, index)
        turns = [Turn("user", prompt), Turn("assistant", self.answer.format(gen=self.gen))]
        focus = _mask(self.root / rec["focus"]) if rec.get("focus") else None
        target = GenerationTarget(image=_rgb(self.root / rec["image"]), caption=caption, focus=focus)
        meta = {k: v for k, v in rec.items() if k not in ("image", "focus")}
        meta.update(dataset="generation_pairs", caption=caption, prompt=prompt)
        return Sample(turns=turns, targets={self.task: [target]}, meta=meta)


@DATASETS.register("editing_triples")
class EditingTriples(Dataset):
    def __init__(self, *, data_dir: str, file: str = "editing.jsonl", answer: str = "{seg} {gen}",
                 seg_token: str = "<seg>", seg_task: str | None = "seg", token: str = "<gen>", num_tokens: int = 4,
                 task: str = "gen", max_samples: int | None = None) -> None:
        self.root = Path(data_dir).expanduser()
        self.records = read_jsonl(self.root / file, required=("source", "instruction", "target", "mask"))[:max_samples]
        if "{gen}" not in answer:
            raise ValueError("editing_triples: answer must contain {gen}")
        if seg_task is not None and "{seg}" not in answer:
            raise ValueError("editing_triples: answer must contain {seg} when seg_task is set (or set seg_task: null)")
        self.answer, self.seg_task, self.task, self.seg_token = answer, seg_task, task, seg_token
        self.gen = "".join(gen_tokens(token, num_tokens))  # a run: no spaces between

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Sample:
        rec = self.records[index]
        mask = _mask(self.root / rec["mask"])
        source = _rgb(self.root / rec["source"])
        text = self.answer.format(seg=self.seg_token if self.seg_task else "", gen=self.gen).strip()
        turns = [Turn("user", str(rec["instruction"]), images=1), Turn("assistant", text)]
        targets: dict[str, list[Any]] = {
            self.task: [GenerationTarget(image=_rgb(self.root / rec["target"]), caption=rec.get("caption"), mask=mask)]}
        if self.seg_task:
            targets[self.seg_task] = [mask]
        meta = {k: v for k, v in rec.items() if k not in ("source", "target", "mask")}
        meta.update(dataset="editing_triples", target_path=str(self.root / rec["target"]), mask=mask)
        return Sample(turns=turns, images=[source], targets=targets, meta=meta)

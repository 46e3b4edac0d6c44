"""Dataset ``reason_seg``: LISA's ReasonSeg layout — each image ``NAME.jpg`` (or .png/.jpeg) sits next
to ``NAME.json``::

    {"text": ["the thing you would sit on to rest", ...], "is_sentence": true,
     "shapes": [{"label": "target", "points": [[x, y], ...]}, {"label": "ignore", "points": ...}]}

Polygons are filled largest first (smaller ones drawn on top, as LISA does); labels containing
"target" mark the object, labels containing "ignore" mark pixels that are neither (kept out of
the target; returned in ``meta["ignore"]``), "flag" shapes are skipped. One sample per
(image, text): sentences (``is_sentence``) are asked as they are, short phrases with a template.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from omniplug.data import seg_common as sc
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TARGET, IGNORE = 1, 255


@DATASETS.register("reason_seg")
class ReasonSegDataset(Dataset):
    def __init__(self, *, data_dir: str, split: str | None = None,
                 question_templates: tuple[str, ...] = ("What is {sent} in this image? Please output segmentation mask.",),
                 sentence_templates: tuple[str, ...] = ("{sent} Please output segmentation mask.",),
                 answer_templates: tuple[str, ...] = sc.ANSWERS, seg_token: str = "<seg>", task: str = "seg",
                 seed: int = 0, max_samples: int | None = None, name: str = "reason_seg") -> None:
        root = Path(data_dir).expanduser() / (split or "")
        what = f"dataset reason_seg ({root})"
        if not root.is_dir():
            raise FileNotFoundError(f"{what}: directory not found")
        sc.check_templates(question_templates, answer_templates, what=what)
        sc.check_templates(sentence_templates, answer_templates, what=what)
        self.items: list[tuple[Path, Path, int]] = []
        for image in sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            ann = image.with_suffix(".json")
            if not ann.is_file():
                continue
            texts = _texts(_load(ann, what))
            self.items.extend((image, ann, k) for k in range(len(texts)))
        if not self.items:
            raise ValueError(f"{what}: no image with a same-named .json annotation found")
        if max_samples is not None:
            self.items = self.items[:max_samples]
        self.questions, self.sentences, self.answers = tuple(question_templates), tuple(sentence_templates), tuple(answer_templates)
        self.seg_token, self.task, self.seed, self.name = seg_token, task, seed, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> Sample:
        image_path, ann_path, k = self.items[idx]
        anno = _load(ann_path, f"dataset {self.name}")
        image = open_image(image_path)
        label_map = mask_from_shapes(anno.get("shapes", []), image.height, image.width, where=str(ann_path))
        text = " ".join(str(_texts(anno)[k]).split())
        rng = sc.rng_for(self.seed, idx)
        if anno.get("is_sentence", False):
            question = sc.fill(rng.choice(self.sentences), sent=text)
        else:
            question = sc.fill(rng.choice(self.questions), sent=sc.clean_phrase(text))
        answer = sc.with_token(rng.choice(self.answers), self.seg_token)
        ignore = label_map == IGNORE
        meta = {"dataset": self.name, "id": f"{image_path.stem}:{k}", "file_name": image_path.name, "labels": [text],
                "is_sentence": bool(anno.get("is_sentence", False)), "ignore": ignore if ignore.any() else None}
        return Sample(turns=[Turn(role="user", text=question, images=1), Turn(role="assistant", text=answer)],
                      images=[image], targets={self.task: [label_map == TARGET]}, meta=meta)


def mask_from_shapes(shapes: list, height: int, width: int, *, where: str) -> np.ndarray:
    """uint8 HxW: 1 target, 255 ignore, 0 background; polygons drawn largest first."""
    drawn: list[tuple[int, list, int]] = []
    for shape in shapes:
        label = str(shape.get("label", "")).lower()
        if label == "flag":
            continue
        if "target" in label:
            value = TARGET
        elif "ignore" in label:
            value = IGNORE
        else:
            raise ValueError(f"{where}: shape label {shape.get('label')!r} is neither 'target' nor 'ignore'")
        points = shape.get("points") or []
        drawn.append((sc.polygon_area(points, height, width), points, value))
    drawn.sort(key=lambda t: -t[0])
    return sc.rasterise_polygons([(p, v) for _, p, v in drawn], height, width)


def _load(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "shapes" not in data or "text" not in data:
        raise ValueError(f"{what}: {path} needs 'text' and 'shapes' (ReasonSeg annotation format)")
    return data


def _texts(anno: dict) -> list[str]:
    text = anno["text"]
    return [text] if isinstance(text, str) else list(text)

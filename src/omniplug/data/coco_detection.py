"""Dataset ``coco_detection``: class detection from COCO instances ("Detect every circle." -> its boxes).

Files under ``data_dir``: ``instances.json`` (COCO instances: ``images`` with ``width``/``height``,
``annotations`` with ``bbox`` = ``[x, y, w, h]`` in pixels, ``categories`` with ``name`` and optional
``supercategory``) and the images in ``image_dir`` (relative to ``data_dir`` or absolute).

One sample per (image, class present in it): the question names the class, the answer holds one
``<det>`` and the target is every box of that class in the image (a list of :class:`omniplug.types.Box`,
labelled with the class name). ``absent_per_image`` more samples per image ask for classes the image
does not hold (chosen by ``seed``); their target is empty, so the detector learns to answer "none".
``categories`` / ``supercategories`` keep only those classes (the world's parts are left to
segmentation with ``supercategories: [shape, composite]``). Crowd annotations are skipped.

Every box is checked when the dataset is built: a degenerate box (w or h <= 0), a box outside its image
or an image without a positive size is an error naming the annotation, not a silent skip.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch.utils.data import Dataset

from omniplug.data import seg_common as sc
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS
from omniplug.types import Box

DET = "<det>"  # the placeholder answer templates use; the reader swaps in its ``det_token``
DET_QUESTIONS: tuple[str, ...] = (
    "Detect every {sent}.",
    "Give the box of every {sent} in the image.",
)
DET_ANSWERS: tuple[str, ...] = ("Sure, <det>.", "Here they are: <det>.")
_TOLERANCE = 1.0  # pixels a box may stick out of its image (rounding in converted annotations)


def coco_box(bbox: Sequence[float], label: str, *, width: int, height: int, what: str) -> Box:
    """A COCO ``[x, y, w, h]`` box -> :class:`Box` in corners, checked against its image (clamped inside it)."""
    if len(bbox) != 4:
        raise ValueError(f"{what}: bbox {list(bbox)} is not [x, y, w, h]")
    x, y, w, h = (float(v) for v in bbox)
    if not (w > 0 and h > 0):
        raise ValueError(f"{what}: degenerate bbox {list(bbox)} (width and height must be > 0); fix or drop the annotation")
    if x < -_TOLERANCE or y < -_TOLERANCE or x + w > width + _TOLERANCE or y + h > height + _TOLERANCE:
        raise ValueError(f"{what}: bbox {list(bbox)} lies outside its {width}x{height} image; fix the annotation "
                         f"or the image's width/height")
    x0, y0 = max(x, 0.0), max(y, 0.0)
    return Box(xyxy=(x0, y0, min(x + w, float(width)), min(y + h, float(height))), label=label)


def image_size(info: dict, what: str) -> tuple[int, int]:
    """(width, height) of a COCO ``images`` entry, both > 0."""
    try:
        width, height = int(info["width"]), int(info["height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{what}: image {info.get('id')} ({info.get('file_name')}) has no integer width/height") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"{what}: image {info.get('id')} ({info.get('file_name')}) is {width}x{height}; "
                         f"an image needs a positive size")
    return width, height


@DATASETS.register("coco_detection")
class CocoDetectionDataset(Dataset):
    box_protocol = "detection"  # omniplug eval scores it with COCO mAP / AP50

    def __init__(self, *, data_dir: str, instances_file: str = "instances.json", image_dir: str = "images",
                 categories: Sequence[str] | None = None, supercategories: Sequence[str] | None = None,
                 absent_per_image: int = 1, question_templates: tuple[str, ...] = DET_QUESTIONS,
                 answer_templates: tuple[str, ...] = DET_ANSWERS, det_token: str = DET, task: str = "det",
                 skip_crowd: bool = True, seed: int = 0, max_samples: int | None = None,
                 name: str = "coco_detection") -> None:
        root, what, inst = sc.open_annotations(data_dir, instances_file, reader="coco_detection")
        if absent_per_image < 0:
            raise ValueError(f"{what}: absent_per_image must be >= 0, got {absent_per_image}")
        _check_templates(question_templates, answer_templates, what)
        if not isinstance(inst, dict) or not all(k in inst for k in ("images", "annotations", "categories")):
            raise ValueError(f"{what}: {instances_file} must be a COCO dict with 'images', 'annotations' and 'categories'")
        cats = {c["id"]: c for c in inst["categories"]}
        keep = dict(cats)
        if categories is not None:
            names = {c["name"] for c in cats.values()}
            unknown = sorted(set(categories) - names)
            if unknown:
                raise ValueError(f"{what}: categories {unknown} are not in {instances_file}; its classes: "
                                 f"{', '.join(sorted(names))}")
            keep = {i: c for i, c in keep.items() if c["name"] in set(categories)}
        if supercategories is not None:
            supers = {c.get("supercategory") for c in cats.values()}
            unknown = sorted(set(supercategories) - supers)
            if unknown:
                raise ValueError(f"{what}: supercategories {unknown} are not in {instances_file}; its supercategories: "
                                 f"{', '.join(sorted(str(s) for s in supers))}")
            keep = {i: c for i, c in keep.items() if c.get("supercategory") in set(supercategories)}
        if not keep:
            raise ValueError(f"{what}: the categories/supercategories filter keeps no class")
        self.categories = {i: sc.clean_phrase(c["name"]) for i, c in keep.items()}
        self.images = {im["id"]: im for im in inst["images"]}
        sizes = {i: image_size(im, what) for i, im in self.images.items()}
        # boxes[(image_id, category_id)] -> list of Box, in annotation order
        self.boxes: dict[tuple[int, int], list[Box]] = {}
        for ann in inst["annotations"]:
            if ann.get("category_id") not in keep or (skip_crowd and ann.get("iscrowd")):
                continue
            if ann.get("image_id") not in self.images:
                raise ValueError(f"{what}: annotation {ann.get('id')} points at missing image {ann.get('image_id')}")
            width, height = sizes[ann["image_id"]]
            box = coco_box(ann.get("bbox", ()), self.categories[ann["category_id"]], width=width, height=height,
                           what=f"{what}: annotation {ann.get('id')}")
            self.boxes.setdefault((ann["image_id"], ann["category_id"]), []).append(box)
        order = sorted(self.categories)
        self.items: list[tuple[int, int]] = []
        for image_id in self.images:
            present = [c for c in order if (image_id, c) in self.boxes]
            absent = [c for c in order if (image_id, c) not in self.boxes]
            sc.rng_for(seed, int(image_id)).shuffle(absent)
            self.items += [(image_id, c) for c in present] + [(image_id, c) for c in absent[:absent_per_image]]
        if max_samples is not None:
            self.items = self.items[:max_samples]
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_absolute():
            self.image_dir = root / self.image_dir
        self.questions, self.answers = tuple(question_templates), tuple(answer_templates)
        self.det_token, self.task, self.seed, self.name = det_token, task, seed, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> Sample:
        image_id, category_id = self.items[idx]
        info, label = self.images[image_id], self.categories[category_id]
        image = open_image(self.image_dir / info["file_name"])
        if (image.width, image.height) != (int(info["width"]), int(info["height"])):
            raise ValueError(f"dataset {self.name}: image {info['file_name']} is {image.width}x{image.height} but "
                             f"{'instances.json'} says {info['width']}x{info['height']}")
        rng = sc.rng_for(self.seed, idx)
        question = sc.fill(rng.choice(self.questions), sent=label)
        answer = rng.choice(self.answers).replace(DET, self.det_token)
        boxes = list(self.boxes.get((image_id, category_id), []))
        meta = {"dataset": self.name, "id": f"{image_id}:{category_id}", "image_id": image_id,
                "file_name": info["file_name"], "labels": [label], "categories": [label]}
        return Sample(turns=[Turn("user", question, images=1), Turn("assistant", answer)], images=[image],
                      targets={self.task: [boxes]}, meta=meta)


def _check_templates(questions: Sequence[str], answers: Sequence[str], what: str) -> None:
    if not questions or not answers:
        raise ValueError(f"{what}: question_templates and answer_templates must not be empty")
    for q in questions:
        if "{sent}" not in q or DET in q:
            raise ValueError(f"{what}: question template {q!r} needs the {{sent}} placeholder and no {DET}")
    for a in answers:
        if a.count(DET) != 1:
            raise ValueError(f"{what}: answer template {a!r} must contain {DET} exactly once")

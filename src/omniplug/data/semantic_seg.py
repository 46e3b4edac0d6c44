"""Dataset ``semantic_seg``: images with class-index label maps, asked class by class.

Layout under ``data_dir`` (ADE20K / COCO-Stuff / Cityscapes after conversion to index PNGs)::

    images/NAME.jpg|png      the image
    labels/NAME.png          uint8 label map, value = class index, ``ignore_index`` = unlabelled
    classes.json             ["wall", "building", ...]  (index -> name), or {"0": "wall", ...}

One sample per image, a multi-turn conversation with one question per asked class (the first
question carries the image), LISA's style: "What is {class_name} in this image? Please output
segmentation mask." -> "It is <seg>.". ``classes_per_sample`` present classes are asked (``null``:
all of them, in class order — what evaluation wants). ``shuffle_classes``: the asked classes in a random
order per sample (fixed by seed and index), so every class is also asked first — as a user, or the
eval, asks a single question.

Absent classes (decision): with ``absent_per_sample: k`` the sample also asks about k classes that
are *not* in the image; the answer says so and still holds ``<seg>``, whose target is an empty
mask — the decoder learns to return nothing there and evaluation scores an empty prediction of
an empty target as IoU 1.0. An ``absent_answer_templates`` entry without ``<seg>`` teaches a
text-only "no" instead (that question then carries no mask target).

``question_templates_by_class: {class name: [templates]}`` asks the named classes in their own forms: stuff
regions in the referring form people type ("Please segment the sky."), while thing classes keep a form of
their own — "Please segment the circle." in a referring dataset means one circle, here all of them, and one
question form meaning both made the default model's referring masks worse (bench/HISTORY.md, v15).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from omniplug.data import seg_common as sc
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image, open_label_map
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@DATASETS.register("semantic_seg")
class SemanticSegDataset(Dataset):
    def __init__(self, *, data_dir: str, image_dir: str = "images", label_dir: str = "labels",
                 classes_file: str = "classes.json", ignore_index: int = 255, ignore_classes: tuple[str, ...] = (),
                 classes_per_sample: int | None = 1, absent_per_sample: int = 0, shuffle_classes: bool = False,
                 question_templates: tuple[str, ...] = ("What is {class_name} in this image? Please output segmentation mask.",),
                 answer_templates: tuple[str, ...] = ("It is <seg>.",),
                 absent_answer_templates: tuple[str, ...] = ("There is no {class_name} in this image: <seg>.",),
                 question_templates_by_class: dict[str, Sequence[str]] | None = None,
                 seg_token: str = "<seg>", task: str = "seg", seed: int = 0, max_samples: int | None = None,
                 name: str = "semantic_seg") -> None:
        root = Path(data_dir).expanduser()
        what = f"dataset semantic_seg ({root})"
        self.image_dir, self.label_dir = root / image_dir, root / label_dir
        for d, key in ((self.image_dir, "image_dir"), (self.label_dir, "label_dir")):
            if not d.is_dir():
                raise FileNotFoundError(f"{what}: {key} {d} not found")
        self.classes = _read_classes(root / classes_file, what)
        unknown = sorted(set(ignore_classes) - set(self.classes.values()))
        if unknown:
            raise ValueError(f"{what}: ignore_classes {unknown} are not in {classes_file}")
        if classes_per_sample is not None and classes_per_sample < 1:
            raise ValueError(f"{what}: classes_per_sample must be >= 1 or null (all present classes)")
        if absent_per_sample < 0:
            raise ValueError(f"{what}: absent_per_sample must be >= 0")
        sc.check_templates(question_templates, answer_templates, what=what, field="{class_name}")
        by_class = {str(k): tuple(v) for k, v in (question_templates_by_class or {}).items()}
        unknown = sorted(set(by_class) - set(self.classes.values()))
        if unknown:
            raise ValueError(f"{what}: question_templates_by_class names {unknown}, which are not in {classes_file} "
                             f"(classes: {sorted(self.classes.values())})")
        for templates in by_class.values():
            sc.check_templates(templates, answer_templates, what=what, field="{class_name}")
        for a in absent_answer_templates:
            if a.count(sc.SEG) > 1:
                raise ValueError(f"{what}: absent answer template {a!r} holds {sc.SEG} more than once")
        self.items: list[tuple[Path, Path]] = []
        for image in sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES):
            label = self.label_dir / (image.stem + ".png")
            if label.is_file():
                self.items.append((image, label))
        if not self.items:
            raise ValueError(f"{what}: no image in {self.image_dir} has a label map {self.label_dir}/NAME.png")
        if max_samples is not None:
            self.items = self.items[:max_samples]
        self.ignore_index = ignore_index
        self.skip = {v for v, n in self.classes.items() if n in set(ignore_classes)}
        self.classes_per_sample, self.absent_per_sample = classes_per_sample, absent_per_sample
        self.shuffle_classes = shuffle_classes
        self.questions, self.answers = tuple(question_templates), tuple(answer_templates)
        self.absent_answers = tuple(absent_answer_templates)
        self.questions_by_class = by_class
        self.seg_token, self.task, self.seed, self.name = seg_token, task, seed, name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> Sample:
        image_path, label_path = self.items[idx]
        image = open_image(image_path)
        labels = np.asarray(open_label_map(label_path)).astype(np.int64)
        if labels.shape != (image.height, image.width):
            raise ValueError(f"dataset {self.name}: label map {label_path} is {labels.shape[0]}x{labels.shape[1]} but "
                             f"image {image_path} is {image.height}x{image.width}")
        values = set(np.unique(labels).tolist()) - {self.ignore_index}
        strange = sorted(values - set(self.classes))
        if strange:
            raise ValueError(f"dataset {self.name}: {label_path} holds class values {strange} missing from the classes "
                             f"file (set ignore_index if one of them means 'unlabelled')")
        rng = sc.rng_for(self.seed, idx)
        present = sorted(values - self.skip)
        if self.classes_per_sample is not None and len(present) > self.classes_per_sample:
            present = sorted(rng.sample(present, self.classes_per_sample))
        absent_pool = sorted(set(self.classes) - values - self.skip)
        absent = sorted(rng.sample(absent_pool, min(self.absent_per_sample, len(absent_pool))))
        asked = [(v, True) for v in present] + [(v, False) for v in absent]
        if not asked and absent_pool:  # nothing labelled to ask about: ask about one absent class
            asked = [(rng.choice(absent_pool), False)]
        if absent or self.shuffle_classes:
            rng.shuffle(asked)
        turns: list[Turn] = []
        masks: list[np.ndarray] = []
        names: list[str] = []
        for k, (value, is_present) in enumerate(asked):
            name = self.classes[value]
            question = rng.choice(self.questions_by_class.get(name, self.questions)).format(class_name=name)
            template = rng.choice(self.answers if is_present else self.absent_answers)
            answer = sc.with_token(template.format(class_name=name), self.seg_token)
            turns += [Turn(role="user", text=question, images=1 if k == 0 else 0), Turn(role="assistant", text=answer)]
            if sc.SEG in template:
                masks.append(labels == value if is_present else np.zeros(labels.shape, dtype=bool))
                names.append(name)
        if not turns:
            raise ValueError(f"dataset {self.name}: {label_path} has no class to ask about (all pixels ignored)")
        meta = {"dataset": self.name, "id": image_path.stem, "file_name": image_path.name, "labels": names,
                "absent": [self.classes[v] for v in absent]}
        return Sample(turns=turns, images=[image], targets={self.task: masks}, meta=meta)


def _read_classes(path: Path, what: str) -> dict[int, str]:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: classes file {path} not found (a JSON list of class names, index = label value)")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON: {exc}") from None
    if isinstance(data, list):
        return {i: str(n) for i, n in enumerate(data)}
    if isinstance(data, dict):
        try:
            return {int(k): str(v) for k, v in data.items()}
        except ValueError:
            pass
    raise ValueError(f"{what}: {path} must be a list of class names or a mapping {{\"index\": \"name\"}}")

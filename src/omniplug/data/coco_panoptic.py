"""Dataset ``coco_panoptic``: panoptic segmentation as one answer listing every region.

Files under ``data_dir``: ``panoptic.json`` (COCO panoptic: ``images``, ``annotations`` with
``file_name`` and ``segments_info``, ``categories`` with ``isthing``), the segment PNGs in
``panoptic_dir`` (RGB, segment id = R + 256 G + 256^2 B) and the images in ``image_dir``.

One sample per image: "Segment every region of the image and name it." ->
"sky <seg>, grass <seg>, circle <seg>, house <seg>." — stuff first, then things, each group in
reading order (top to bottom, then left to right, by the segment's centroid), one ``<seg>`` per
segment, masks in the same order. ``meta["labels"]`` holds the category name of each mask and
``meta["isthing"]`` whether it is a thing, for panoptic quality.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from omniplug.data import seg_common as sc
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS

PANOPTIC_QUESTIONS = ("Segment every region of the image and name it.", "List and segment all regions in the image.")


def segment_ids(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


@DATASETS.register("coco_panoptic")
class CocoPanopticDataset(Dataset):
    def __init__(self, *, data_dir: str, panoptic_file: str = "panoptic.json", panoptic_dir: str = "panoptic",
                 image_dir: str = "images", question_templates: tuple[str, ...] = PANOPTIC_QUESTIONS,
                 item_template: str = "{label} <seg>", seg_token: str = "<seg>", task: str = "seg",
                 max_segments: int = 12, seed: int = 0, max_samples: int | None = None,
                 name: str = "panoptic") -> None:
        root, what, data = sc.open_annotations(data_dir, panoptic_file, reader="coco_panoptic")
        if item_template.count("<seg>") != 1 or "{label}" not in item_template:
            raise ValueError(f"{what}: item_template must contain {{label}} and <seg> once, got {item_template!r}")
        if not question_templates:
            raise ValueError(f"{what}: question_templates must not be empty")
        self.images = {im["id"]: im for im in data["images"]}
        self.categories = {c["id"]: c for c in data["categories"]}
        self.annotations = [a for a in data["annotations"] if 0 < len(a["segments_info"]) <= max_segments]
        if max_samples is not None:
            self.annotations = self.annotations[:max_samples]
        self.root, self.what = root, what
        self.panoptic_dir = _under(root, panoptic_dir)
        self.image_dir = _under(root, image_dir)
        self.questions, self.item = tuple(question_templates), item_template
        self.seg_token, self.task, self.seed, self.name = seg_token, task, seed, name

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, idx: int) -> Sample:
        ann = self.annotations[idx]
        info = self.images[ann["image_id"]]
        image = open_image(self.image_dir / info["file_name"])
        ids = segment_ids(np.asarray(open_image(self.panoptic_dir / ann["file_name"])))
        segments = []
        for seg in ann["segments_info"]:
            mask = ids == seg["id"]
            if not mask.any():
                continue
            cat = self.categories[seg["category_id"]]
            ys, xs = np.nonzero(mask)
            segments.append((0 if cat.get("isthing") else -1, float(ys.mean()), float(xs.mean()), cat, mask))
        segments.sort(key=lambda s: (s[0], round(s[1] / 4), s[2]))  # stuff first; rows of 4 px, then x
        labels = [sc.clean_phrase(s[3]["name"]) for s in segments]
        items = [sc.with_token(self.item.format(label=label), self.seg_token) for label in labels]
        rng = sc.rng_for(self.seed, idx)
        meta = {"dataset": self.name, "id": str(ann["image_id"]), "image_id": ann["image_id"],
                "file_name": info["file_name"], "labels": labels, "isthing": [bool(s[3].get("isthing")) for s in segments]}
        return Sample(turns=[Turn("user", rng.choice(self.questions), images=1),
                             Turn("assistant", ", ".join(items) + ".")],
                      images=[image], targets={self.task: [s[4] for s in segments]}, meta=meta)


def _under(root: Path, sub: str) -> Path:
    p = Path(sub).expanduser()
    return p if p.is_absolute() else root / p

"""Dataset ``coco_parts``: part segmentation ("Please segment the roof of the house on the left.").

Reads COCO instances where part annotations carry ``attributes.part_of`` (the annotation id of
the whole object) — the layout the procedural world writes, and the way part datasets (PACO,
PartImageNet converted to COCO) can be expressed. The whole object is named by its shortest
referring expression from ``refs.json`` when given (so several houses stay distinguishable),
else "the {category}" when it is the only one of its category in the image (otherwise skipped).
One sample per (whole, part name): all parts of that name in that whole form one target mask.

``parts_per_sample: k > 1`` asks up to k (whole, part) pairs of one image in one multi-turn conversation
(the first question carries the image), in a random order fixed by seed and index, so every pair is also
asked first — the form semantic_seg's ``classes_per_sample`` uses: k masks for one image encoding.
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

PART_QUESTIONS = ("Please segment the {part} of {whole}.", "What is the {part} of {whole}? Please output segmentation mask.")


@DATASETS.register("coco_parts")
class CocoPartsDataset(Dataset):
    def __init__(self, *, data_dir: str, instances_file: str = "instances.json", refs_file: str | None = "refs.json",
                 image_dir: str = "images", question_templates: tuple[str, ...] = PART_QUESTIONS,
                 answer_templates: tuple[str, ...] = ("It is <seg>.",), seg_token: str = "<seg>", task: str = "seg",
                 parts_per_sample: int = 1, seed: int = 0, max_samples: int | None = None,
                 name: str = "part") -> None:
        root, what, inst = sc.open_annotations(data_dir, instances_file, reader="coco_parts")
        for q in question_templates:
            if "{part}" not in q or "{whole}" not in q:
                raise ValueError(f"{what}: question template {q!r} needs {{part}} and {{whole}}")
        sc.check_templates(("{sent}",), answer_templates, what=what)
        if parts_per_sample < 1:
            raise ValueError(f"{what}: parts_per_sample must be >= 1, got {parts_per_sample}")
        cats = {c["id"]: c["name"] for c in inst["categories"]}
        self.images = {im["id"]: im for im in inst["images"]}
        anns = {a["id"]: a for a in inst["annotations"]}
        phrases: dict[int, str] = {}
        if refs_file and (root / refs_file).is_file():
            for ref in json.loads((root / refs_file).read_text()):
                sents = sorted((s["sent"] for s in ref.get("sentences", [])), key=len)
                if sents:
                    phrases[ref["ann_id"]] = sc.clean_phrase(sents[0])
        per_image_count: dict[tuple[int, int], int] = {}
        for a in anns.values():
            per_image_count[(a["image_id"], a["category_id"])] = per_image_count.get((a["image_id"], a["category_id"]), 0) + 1
        groups: dict[tuple[int, str], list[int]] = {}
        for a in anns.values():
            whole_id = (a.get("attributes") or {}).get("part_of")
            if whole_id is None or whole_id not in anns:
                continue
            groups.setdefault((whole_id, cats[a["category_id"]]), []).append(a["id"])
        self.items: list[tuple[int, str, str, list[int]]] = []
        for (whole_id, part), part_ids in sorted(groups.items()):
            whole = anns[whole_id]
            phrase = phrases.get(whole_id)
            if phrase is None:
                if per_image_count[(whole["image_id"], whole["category_id"])] != 1:
                    continue
                phrase = f"the {cats[whole['category_id']]}"
            self.items.append((whole_id, part, phrase, sorted(part_ids)))
        # groups: indices into items, one group per sample (k pairs of one image when parts_per_sample > 1)
        if parts_per_sample == 1:
            self.groups = [[i] for i in range(len(self.items))]
        else:
            by_image: dict[int, list[int]] = {}
            for i, (whole_id, *_rest) in enumerate(self.items):
                by_image.setdefault(anns[whole_id]["image_id"], []).append(i)
            self.groups = [g[k:k + parts_per_sample] for _, g in sorted(by_image.items())
                           for k in range(0, len(g), parts_per_sample)]
        if max_samples is not None:
            self.groups = self.groups[:max_samples]
        self.parts_per_sample = parts_per_sample
        self.anns, self.cats = anns, cats
        self.image_dir = Path(image_dir) if Path(image_dir).is_absolute() else root / image_dir
        self.questions, self.answers = tuple(question_templates), tuple(answer_templates)
        self.seg_token, self.task, self.seed, self.name = seg_token, task, seed, name

    def __len__(self) -> int:
        return len(self.groups)

    def _mask(self, part_ids: list[int], h: int, w: int) -> np.ndarray:
        mask = np.zeros((h, w), dtype=bool)
        for pid in part_ids:
            mask |= sc.decode_coco_segmentation(self.anns[pid]["segmentation"], h, w)
        return mask

    def __getitem__(self, idx: int) -> Sample:
        rng = sc.rng_for(self.seed, idx)
        group = list(self.groups[idx])
        if len(group) > 1:
            rng.shuffle(group)
        info = self.images[self.anns[self.items[group[0]][0]]["image_id"]]
        image = open_image(self.image_dir / info["file_name"])
        h, w = int(info["height"]), int(info["width"])
        turns: list[Turn] = []
        masks: list[np.ndarray] = []
        for k, i in enumerate(group):
            _whole_id, part, phrase, part_ids = self.items[i]
            question = sc.fill(rng.choice(self.questions), part=part, whole=phrase)
            answer = sc.with_token(rng.choice(self.answers), self.seg_token)
            turns += [Turn("user", question, images=1 if k == 0 else 0), Turn("assistant", answer)]
            masks.append(self._mask(part_ids, h, w))
        pairs = [self.items[i] for i in group]
        meta = {"dataset": self.name, "id": "+".join(f"{p[0]}:{p[1]}" for p in pairs), "image_id": info["id"],
                "file_name": info["file_name"], "labels": [p[1] for p in pairs], "whole": pairs[0][2],
                "wholes": [p[2] for p in pairs]}
        return Sample(turns=turns, images=[image], targets={self.task: masks}, meta=meta)

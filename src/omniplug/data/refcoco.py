"""Dataset ``refcoco``: referring-expression segmentation (refCOCO / refCOCO+ / refCOCOg layout).

Files under ``data_dir``:

* ``instances.json`` — COCO instances (``images``, ``annotations`` with polygon or RLE
  ``segmentation``, ``categories``);
* ``refs.json`` — ``[{ref_id, ann_id, image_id, category_id, split, sentences: [{sent, sent_id,
  tokens}]}]``. The original ``refs(unc).p`` is a Python pickle; omniplug never unpickles
  files (that can run code) — convert it once to JSON with a tool you trust;
* images in ``image_dir`` (relative to ``data_dir`` or absolute), named by ``file_name``.

``refs_per_sample: 1`` gives one sample per (ref, sentence): the question asks for one object, the
answer holds one ``<seg>``. ``refs_per_sample: k > 1`` gives one sample per group of up to k refs of
an image (one sentence each): "Please segment the a and the b." -> "the a: <seg>, the b: <seg>.",
masks in that order. With ``multi_turn: true`` the group is asked as a multi-turn conversation instead,
one expression per question (the first carries the image), in a random order fixed by seed and index —
each question the single-object form evaluation asks, k masks for one image encoding.

``target: box`` reads the same refs as referring *detection* (refCOCO's box protocol): the target of each
trigger token is a one-element list of :class:`omniplug.types.Box` (the annotation's ``bbox``, labelled with
its category), the default questions ask for a box ("Where is the red square? Give its box.") and
``seg_token`` is then the detector's token, e.g. ``<det>``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from torch.utils.data import Dataset

from omniplug.data import seg_common as sc
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS
from omniplug.types import Box

#: referring-detection questions for ``target: box``
BOX_QUESTIONS: tuple[str, ...] = (
    "Where is the {sent}? Give its box.",
    "Please give the bounding box of the {sent}.",
)

_PICKLE_SUFFIXES = (".p", ".pkl", ".pickle")


@DATASETS.register("refcoco")
class RefCocoDataset(Dataset):
    def __init__(self, *, data_dir: str, split: str = "train", instances_file: str = "instances.json",
                 refs_file: str = "refs.json", image_dir: str = "images", refs_per_sample: int = 1,
                 multi_turn: bool = False, target: Literal["mask", "box"] = "mask",
                 question_templates: tuple[str, ...] | None = None, answer_templates: tuple[str, ...] = sc.ANSWERS,
                 multi_question_template: str = "Please segment the {sent}.",
                 multi_answer_item: str = "{sent}: <seg>", seg_token: str = "<seg>", task: str = "seg", seed: int = 0,
                 max_samples: int | None = None, name: str = "refcoco") -> None:
        root = Path(data_dir).expanduser()
        what = f"dataset refcoco ({root})"
        refs_path, inst_path = root / refs_file, root / instances_file
        if refs_path.suffix.lower() in _PICKLE_SUFFIXES:
            raise ValueError(
                f"{what}: refs_file {refs_file!r} is a pickle; omniplug does not unpickle files (unpickling runs code). "
                f"Convert it once to JSON with a tool you trust, e.g. python -c \"import json,pickle; "
                f"json.dump(pickle.load(open('{refs_file}','rb')), open('refs.json','w'))\", then set refs_file: refs.json"
            )
        for p, key in ((refs_path, "refs_file"), (inst_path, "instances_file")):
            if not p.is_file():
                raise FileNotFoundError(f"{what}: {key} {p} not found")
        if target not in ("mask", "box"):
            raise ValueError(f"{what}: target must be 'mask' or 'box', got {target!r}")
        if question_templates is None:
            question_templates = BOX_QUESTIONS if target == "box" else sc.REFER_QUESTIONS
        if refs_per_sample < 1:
            raise ValueError(f"{what}: refs_per_sample must be >= 1, got {refs_per_sample}")
        sc.check_templates(question_templates, answer_templates, what=what)
        sc.check_templates([multi_question_template], [multi_answer_item], what=what)
        refs = sc.read_json(refs_path, what)
        inst = sc.read_json(inst_path, what)
        if not isinstance(refs, list) or not isinstance(inst, dict) or "annotations" not in inst or "images" not in inst:
            raise ValueError(f"{what}: expected refs.json to be a list of refs and instances.json a COCO dict "
                             f"with 'images' and 'annotations'")
        self.images = {im["id"]: im for im in inst["images"]}
        self.anns = {a["id"]: a for a in inst["annotations"]}
        self.categories = {c["id"]: c.get("name", str(c["id"])) for c in inst.get("categories", [])}
        self.refs = [r for r in refs if r.get("split") == split]
        if not self.refs:
            splits = sorted({str(r.get("split")) for r in refs})
            raise ValueError(f"{what}: no refs with split {split!r}; splits in {refs_file}: {', '.join(splits)}")
        for r in self.refs:
            if r["ann_id"] not in self.anns or r["image_id"] not in self.images or not r.get("sentences"):
                raise ValueError(f"{what}: ref {r.get('ref_id')} points at a missing annotation/image or has no sentences")
        self.image_dir = Path(image_dir).expanduser()
        if not self.image_dir.is_absolute():
            self.image_dir = root / self.image_dir
        self.refs_per_sample, self.multi_turn, self.target = refs_per_sample, multi_turn, target
        self.box_protocol = "referring" if target == "box" else None  # omniplug eval: box accuracy at IoU 0.5
        self.questions, self.answers = tuple(question_templates), tuple(answer_templates)
        self.multi_question, self.multi_item = multi_question_template, multi_answer_item
        self.seg_token, self.task, self.seed, self.name = seg_token, task, seed, name
        # items: (ref index, sentence index) or a group of ref indices of one image
        if refs_per_sample == 1:
            self.items: list = [(i, j) for i, r in enumerate(self.refs) for j in range(len(r["sentences"]))]
        else:
            by_image: dict[int, list[int]] = {}
            for i, r in enumerate(self.refs):
                by_image.setdefault(r["image_id"], []).append(i)
            self.items = [group[k:k + refs_per_sample] for group in by_image.values()
                          for k in range(0, len(group), refs_per_sample)]
        if max_samples is not None:
            self.items = self.items[:max_samples]

    def __len__(self) -> int:
        return len(self.items)

    def mask(self, ref: dict) -> np.ndarray:
        ann, info = self.anns[ref["ann_id"]], self.images[ref["image_id"]]
        return sc.decode_coco_segmentation(ann["segmentation"], int(info["height"]), int(info["width"]))

    def box(self, ref: dict) -> Box:
        """The referred annotation's box (its ``bbox``, or the box around its mask when it has none)."""
        from omniplug.data.coco_detection import coco_box, image_size

        ann, info = self.anns[ref["ann_id"]], self.images[ref["image_id"]]
        width, height = image_size(info, f"dataset {self.name}")
        label = self.categories.get(ref.get("category_id", ann.get("category_id")), "object")
        bbox = ann.get("bbox")
        if bbox is None:
            ys, xs = np.nonzero(self.mask(ref))
            if not len(xs):
                raise ValueError(f"dataset {self.name}: annotation {ann['id']} has no bbox and an empty mask")
            bbox = [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        return coco_box(bbox, label, width=width, height=height, what=f"dataset {self.name}: annotation {ann['id']}")

    def __getitem__(self, idx: int) -> Sample:
        rng = sc.rng_for(self.seed, idx)
        item = self.items[idx]
        if self.refs_per_sample == 1:
            ref_idx, sent_idx = item
            refs, sents = [self.refs[ref_idx]], [self.refs[ref_idx]["sentences"][sent_idx]]
            turns = self._one_turn(rng, sc.clean_phrase(sents[0]["sent"]), first=True)
        elif self.multi_turn:
            refs = [self.refs[i] for i in item]
            rng.shuffle(refs)
            sents = [rng.choice(r["sentences"]) for r in refs]
            turns = [t for k, s in enumerate(sents) for t in self._one_turn(rng, sc.clean_phrase(s["sent"]), first=k == 0)]
        else:
            refs = [self.refs[i] for i in item]
            sents = [rng.choice(r["sentences"]) for r in refs]
            phrases = [sc.clean_phrase(s["sent"]) for s in sents]
            question = sc.fill(self.multi_question, sent=sc.join_phrases(phrases))
            answer = ", ".join(sc.with_token(self.multi_item.format(sent=p), self.seg_token) for p in phrases) + "."
            turns = [Turn(role="user", text=question, images=1), Turn(role="assistant", text=answer)]
        info = self.images[refs[0]["image_id"]]
        image = open_image(self.image_dir / info["file_name"])
        if self.target == "box":
            targets = [[self.box(r)] for r in refs]
        else:
            targets = [self.mask(r) for r in refs]
        if self.target == "mask" and targets[0].shape != (image.height, image.width):
            raise ValueError(f"dataset {self.name}: image {info['file_name']} is {image.height}x{image.width} but "
                             f"instances.json says {targets[0].shape[0]}x{targets[0].shape[1]}")
        meta = {"dataset": self.name, "id": "+".join(f"{r['ref_id']}:{s.get('sent_id', '')}" for r, s in zip(refs, sents)),
                "image_id": info["id"], "file_name": info["file_name"], "ref_ids": [r["ref_id"] for r in refs],
                "ann_ids": [r["ann_id"] for r in refs], "labels": [sc.clean_phrase(s["sent"]) for s in sents],
                "categories": [self.categories.get(r.get("category_id"), None) for r in refs]}
        return Sample(turns=turns, images=[image], targets={self.task: targets}, meta=meta)

    def _one_turn(self, rng, phrase: str, *, first: bool) -> list[Turn]:
        question = sc.fill(rng.choice(self.questions), sent=phrase)
        answer = sc.with_token(rng.choice(self.answers), self.seg_token)
        return [Turn(role="user", text=question, images=1 if first else 0), Turn(role="assistant", text=answer)]

"""Write a split of the world to disk in standard formats, and read its scenes back.

The layout and every field are documented in docs/world.md. Everything written is a pure
function of (config, seed, split, n): no timestamps, no dict-order surprises.
"""

from __future__ import annotations

import io
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from .editing import edit_mask, sample_edit
from .language import CAPTION_PROMPTS, caption, referrals, tokens, vqa
from .masks import encode_rle, ids_to_rgb, mask_to_polygons, polygons_match
from .reasoning import reasoning_query
from .render import THING_ID_OFFSET, Rendering, mask_bbox, render_scene
from .scene import Scene, WorldConfig, sample_scene, scene_rng
from .vocab import (
    ALL_COLOURS, CATEGORIES, CATEGORY_ID, INSTANCE_CATEGORIES, PANOPTIC_CATEGORIES, SEMANTIC_CLASSES, WORLD_VERSION,
)

ANN_IDS_PER_IMAGE = 1000  # annotation id = image_id * 1000 + k + 1 (stable per scene)
SUBDIRS = ("images", "panoptic", "semantic", "reason_seg", "generation", "edit_targets", "edit_masks")


def _name(index: int) -> str:
    return f"{index:06d}"


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _save_png(array: np.ndarray, path: Path) -> None:
    path.write_bytes(_png_bytes(array))


def _bbox(b: tuple[int, int, int, int]) -> list[int]:
    return [int(v) for v in b]


def scene_record(r: Rendering) -> dict[str, Any]:
    """The scenes.jsonl line: the scene spec (enough to re-render it) plus derived annotations."""
    d = r.scene.to_json()
    d["image_id"] = r.scene.index
    d["file_name"] = f"images/{_name(r.scene.index)}.png"
    for od, ann in zip(d["objects"], r.objects):
        od.update({"bbox": _bbox(ann.bbox), "area": ann.area, "full_bbox": _bbox(ann.full_bbox),
                   "full_area": ann.full_area, "visible_fraction": round(ann.visible_fraction, 4),
                   "parts": [{"name": p.name, "index": p.index, "bbox": _bbox(p.bbox), "area": p.area,
                              "full_area": p.full_area} for p in ann.parts]})
    d["stuff"] = [{"name": s.name, "bbox": _bbox(s.bbox), "area": s.area} for s in r.stuff]
    return d


class _Writer:
    def __init__(self, *, out: Path, config: WorldConfig, seed: int, split: str, n: int) -> None:
        self.out, self.config, self.seed, self.split, self.n = out, config, seed, split, n
        self.scenes: list[str] = []
        self.llava: list[dict] = []
        self.images: list[dict] = []
        self.instances: list[dict] = []
        self.panoptic: list[dict] = []
        self.refs: list[dict] = []
        self.generation: list[str] = []
        self.editing: list[str] = []
        self.counts = {"objects": 0, "refs": 0, "reason_seg": 0, "editing": 0, "generation": 0}

    def merge(self, other: "_Writer") -> None:
        """Append the records of ``other`` (the next scenes in index order)."""
        for field in ("scenes", "llava", "images", "instances", "panoptic", "refs", "generation", "editing"):
            getattr(self, field).extend(getattr(other, field))
        for key, value in other.counts.items():
            self.counts[key] += value

    def add(self, index: int) -> None:
        cfg, name = self.config, _name(index)
        scene = sample_scene(config=cfg, seed=self.seed, split=self.split, index=index)
        r = render_scene(scene)
        png = _png_bytes(r.image)
        (self.out / "images" / f"{name}.png").write_bytes(png)
        self.scenes.append(json.dumps(scene_record(r)))
        lang = scene_rng(seed=self.seed, split=self.split, index=index, stream="language")
        self._llava(r, lang)
        ann_ids = self._coco(r)
        self._refs(r, lang, ann_ids)
        self._panoptic_semantic(r)
        self._reason(r, lang, png)
        self._generation(index)
        self._editing(r)
        self.counts["objects"] += len(scene.objects)

    def _llava(self, r: Rendering, rng: np.random.Generator) -> None:
        name = _name(r.scene.index)
        prompt = CAPTION_PROMPTS[int(rng.integers(len(CAPTION_PROMPTS)))]
        conv = [{"from": "human", "value": f"<image>\n{prompt}"}, {"from": "gpt", "value": caption(r.scene, rng)}]
        for qa in vqa(r.scene, rng):
            conv += [{"from": "human", "value": qa.question}, {"from": "gpt", "value": qa.answer}]
        self.llava.append({"id": name, "image": f"images/{name}.png", "conversations": conv})

    def _coco(self, r: Rendering) -> dict[int, int]:
        """Instance annotations for objects then parts; returns object id -> annotation id."""
        sc = r.scene
        self.images.append({"id": sc.index, "file_name": f"{_name(sc.index)}.png",
                            "width": sc.width, "height": sc.height})
        base, k, ids = sc.index * ANN_IDS_PER_IMAGE, 0, {}
        for i, (o, ann) in enumerate(zip(sc.objects, r.objects)):
            k += 1
            ids[o.id] = base + k
            self.instances.append(self._ann(base + k, sc.index, o.category, r.visible_mask(i), {
                "object_id": o.id, "colour": o.colour, "size": o.size, "centre": [o.x, o.y],
                "visible_fraction": round(ann.visible_fraction, 4)}))
        for i, (o, ann) in enumerate(zip(sc.objects, r.objects)):
            for p in ann.parts:
                k += 1
                m = r.visible_mask(i) & (r.part_owner == p.index)
                self.instances.append(self._ann(base + k, sc.index, p.name, m, {
                    "object_id": o.id, "part_of": ids[o.id], "part_index": p.index}))
        if k >= ANN_IDS_PER_IMAGE:
            raise ValueError(f"scene {sc.index} has {k} annotations; at most {ANN_IDS_PER_IMAGE - 1} fit its id range")
        return ids

    @staticmethod
    def _ann(ann_id: int, image_id: int, category: str, mask: np.ndarray, attributes: dict) -> dict:
        return {"id": ann_id, "image_id": image_id, "category_id": CATEGORY_ID[category],
                "segmentation": encode_rle(mask), "area": int(mask.sum()), "bbox": _bbox(mask_bbox(mask)),
                "iscrowd": 0, "attributes": attributes}

    def _refs(self, r: Rendering, rng: np.random.Generator, ann_ids: dict[int, int]) -> None:
        sc = r.scene
        for ref in referrals(sc, rng):
            ref_id = ann_ids[ref.object_id]
            self.refs.append({
                "ref_id": ref_id, "ann_id": ref_id, "image_id": sc.index,
                "category_id": CATEGORY_ID[sc.object(ref.object_id).category], "split": self.split,
                "file_name": f"{_name(sc.index)}.png",
                "sentences": [{"sent_id": ref_id * 10 + j, "sent": s, "tokens": tokens(s)}
                              for j, s in enumerate(ref.sentences)],
                "sent_ids": [ref_id * 10 + j for j in range(len(ref.sentences))]})
            self.counts["refs"] += 1

    def _panoptic_semantic(self, r: Rendering) -> None:
        name = _name(r.scene.index)
        ids = r.panoptic_ids()
        _save_png(ids_to_rgb(ids), self.out / "panoptic" / f"{name}.png")
        _save_png(r.semantic_map(), self.out / "semantic" / f"{name}.png")
        segs = []
        for s in r.stuff:
            segs.append({"id": CATEGORY_ID[s.name], "category_id": CATEGORY_ID[s.name], "area": s.area,
                         "bbox": _bbox(s.bbox), "iscrowd": 0})
        for i, (o, ann) in enumerate(zip(r.scene.objects, r.objects)):
            segs.append({"id": THING_ID_OFFSET + o.id, "category_id": CATEGORY_ID[o.category], "area": ann.area,
                         "bbox": _bbox(ann.bbox), "iscrowd": 0})
        self.panoptic.append({"image_id": r.scene.index, "file_name": f"{name}.png", "segments_info": segs})

    def _reason(self, r: Rendering, rng: np.random.Generator, png: bytes) -> None:
        found = reasoning_query(r, rng)
        if found is None:
            return
        target, texts = found
        mask = target.mask(r)
        polys = mask_to_polygons(mask)
        if not polygons_match(mask, polys):
            raise AssertionError(f"scene {r.scene.index}: polygon of reasoning target does not reproduce its mask")
        name = _name(r.scene.index)
        doc = {"text": list(texts), "is_sentence": True,
               "shapes": [{"label": "target", "points": p, "group_id": None, "shape_type": "polygon", "flags": {}}
                          for p in polys],
               "image": f"images/{name}.png", "imageHeight": r.scene.height, "imageWidth": r.scene.width,
               "mask_rle": encode_rle(mask), "query": target.query.text(), "query_kind": target.query.op,
               "object_id": target.object_id, "part": target.part}
        (self.out / "reason_seg" / f"{name}.json").write_text(json.dumps(doc))
        (self.out / "reason_seg" / f"{name}.png").write_bytes(png)  # ReasonSeg readers expect it alongside
        self.counts["reason_seg"] += 1

    def _generation(self, index: int) -> None:
        scene = sample_scene(config=self.config, seed=self.seed, split=self.split, index=index, stream="generation")
        r = render_scene(scene)
        name = _name(index)
        _save_png(r.image, self.out / "generation" / f"{name}.png")
        self.generation.append(json.dumps({"id": name, "image": f"generation/{name}.png",
                                           "caption": caption(scene, bare=True),
                                           "scene": scene.to_json()}))
        self.counts["generation"] += 1

    def _editing(self, r: Rendering) -> None:
        rng = scene_rng(seed=self.seed, split=self.split, index=r.scene.index, stream="editing")
        edit = sample_edit(r.scene, self.config, rng)
        if edit is None:
            return
        tr = render_scene(edit.target)
        mask = edit_mask(r, tr, edit.object_id)
        if (np.any(r.image != tr.image, axis=-1) & ~mask).any():
            raise AssertionError(f"scene {r.scene.index}: edit changed pixels outside its mask")
        name = _name(r.scene.index)
        _save_png(tr.image, self.out / "edit_targets" / f"{name}.png")
        _save_png(mask.astype(np.uint8) * 255, self.out / "edit_masks" / f"{name}.png")
        self.editing.append(json.dumps({
            "id": name, "source": f"images/{name}.png", "instruction": edit.instruction,
            "target": f"edit_targets/{name}.png", "mask": f"edit_masks/{name}.png", "edit": edit.kind,
            "object_id": edit.object_id, "target_scene": edit.target.to_json()}))
        self.counts["editing"] += 1

    def finish(self) -> None:
        out, info = self.out, {"description": f"omniplug procedural world, split {self.split}",
                               "version": WORLD_VERSION, "seed": self.seed}
        _write_lines(out / "scenes.jsonl", self.scenes)
        _write_json(out / "llava.json", self.llava)
        _write_json(out / "instances.json", {
            "info": info, "licenses": [], "images": self.images, "annotations": self.instances,
            "categories": [{"id": c.id, "name": c.name, "supercategory": c.supercategory} for c in INSTANCE_CATEGORIES]})
        _write_json(out / "refs.json", self.refs)
        _write_json(out / "panoptic.json", {
            "info": info, "licenses": [],
            "images": self.images,
            "annotations": self.panoptic,
            "categories": [{"id": c.id, "name": c.name, "supercategory": c.supercategory, "isthing": int(c.isthing)}
                           for c in PANOPTIC_CATEGORIES]})
        _write_json(out / "semantic_classes.json", list(SEMANTIC_CLASSES))
        _write_lines(out / "generation.jsonl", self.generation)
        _write_lines(out / "editing.jsonl", self.editing)
        cfg = asdict(self.config)
        cfg["holdout"] = [list(c) for c in self.config.holdout]
        _write_json(out / "meta.json", {
            "world_version": WORLD_VERSION, "seed": self.seed, "n": self.n, "split": self.split,
            "size": self.config.size, "holdout": [f"{c} {s}" for c, s in self.config.holdout], "config": cfg,
            "colours": {k: list(v) for k, v in ALL_COLOURS.items()},
            "categories": [asdict(c) for c in CATEGORIES],
            "semantic_classes": list(SEMANTIC_CLASSES), "counts": self.counts})


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, separators=(",", ":")))


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


@dataclass(frozen=True)
class SplitSummary:
    out_dir: Path
    split: str
    n: int
    seconds: float
    counts: dict[str, int]

    @property
    def scenes_per_second(self) -> float:
        return self.n / max(self.seconds, 1e-9)


def default_workers(n: int) -> int:
    """Processes for generating a split of ``n`` scenes: the cores this process may use, at most 8; one
    below 500 scenes, where starting processes costs more than it saves."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return 1 if n < 500 else max(1, min(8, cores))


def write_split(*, out_dir: str | Path, n: int, seed: int, split: str = "train", config: WorldConfig | None = None,
                overwrite: bool = False, progress: bool = False, workers: int = 1) -> SplitSummary:
    """Generate scenes 0..n-1 of ``split`` and write every annotation file into ``out_dir``.

    ``workers`` > 1 renders chunks of scenes in that many processes; every scene is a function of
    (config, seed, split, index) alone, so the files are byte-identical to a one-process run."""
    config = config or WorldConfig()
    if n < 1:
        raise ValueError(f"n must be >= 1 (got {n})")
    if workers < 1:
        raise ValueError(f"workers must be >= 1 (got {workers})")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; choose an empty directory or pass overwrite=True (--overwrite)")
    if overwrite and out.exists():
        _clear_split(out)
    for sub in SUBDIRS:
        (out / sub).mkdir(parents=True, exist_ok=True)
    w = _Writer(out=out, config=config, seed=seed, split=split, n=n)
    start = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, desc=f"world {split}", unit="scene")
    if workers == 1:
        for i in range(n):
            w.add(i)
            if bar is not None:
                bar.update(1)
    else:
        size = max(1, min(_CHUNK, -(-n // (4 * workers))))  # >= 4 tasks per process, for an even finish
        chunks = [range(a, min(a + size, n)) for a in range(0, n, size)]
        # spawn, not fork: the caller may be a training process with torch's thread pools running
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            parts = [pool.submit(_write_chunk, out, config, seed, split, n, chunk) for chunk in chunks]
            for part, chunk in zip(parts, chunks):  # merged in scene order, whatever order they finish in
                w.merge(part.result())
                if bar is not None:
                    bar.update(len(chunk))
    if bar is not None:
        bar.close()
    w.finish()
    return SplitSummary(out_dir=out, split=split, n=n, seconds=time.perf_counter() - start, counts=dict(w.counts))


_CHUNK = 200  # at most this many scenes per task when several processes write a split


def _write_chunk(out: Path, config: WorldConfig, seed: int, split: str, n: int, indices: range) -> _Writer:
    w = _Writer(out=out, config=config, seed=seed, split=split, n=n)
    for i in indices:
        w.add(i)
    return w


_KNOWN_FILES = ("meta.json", "scenes.jsonl", "llava.json", "instances.json", "refs.json", "panoptic.json",
                "semantic_classes.json", "generation.jsonl", "editing.jsonl")


def _clear_split(out: Path) -> None:
    """Remove a split written earlier. Refuses (removing nothing) unless ``out`` holds only world files."""
    if not (out / "meta.json").is_file():
        raise FileExistsError(f"{out} is not empty and has no meta.json, so it is not a world split; "
                              "refusing to overwrite it — choose another directory")
    doomed: list[Path] = []
    for p in out.iterdir():
        if p.is_dir() and p.name in SUBDIRS and all(f.is_file() for f in p.iterdir()):
            doomed += list(p.iterdir()) + [p]
        elif p.is_file() and p.name in _KNOWN_FILES:
            doomed.append(p)
        else:
            raise FileExistsError(f"{out} holds {p.name!r}, which is not part of a world split; "
                                  "refusing to overwrite it — choose another directory")
    for p in doomed:
        p.rmdir() if p.is_dir() else p.unlink()


# ---- reading back --------------------------------------------------------------------------


def read_scenes(path: str | Path) -> list[Scene]:
    """Scenes of a written split (``DIR`` or ``DIR/scenes.jsonl``), in index order."""
    p = Path(path)
    if p.is_dir():
        p = p / "scenes.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found; write a split first: omniplug world generate --out DIR --n N")
    with p.open() as f:
        return [Scene.from_json(json.loads(line)) for line in f if line.strip()]


def read_meta(path: str | Path) -> dict[str, Any]:
    p = Path(path) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found; is {path} a world split written by omniplug world generate?")
    return json.loads(p.read_text())


def config_from_meta(meta: dict[str, Any]) -> WorldConfig:
    cfg = dict(meta["config"])
    cfg["holdout"] = tuple(tuple(c) for c in cfg["holdout"])
    return WorldConfig(**cfg)

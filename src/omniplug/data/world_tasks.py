"""Dataset ``world``: one task of a procedural-world split, read by the standard reader for it.

The split is generated on first use (deterministically, from ``seed``) when ``root`` holds none,
so ``omniplug train -c configs/default/omni_tiny.yaml`` reproduces the default model from nothing.
The data then goes through the same readers real data does (LLaVA JSON, refCOCO, ReasonSeg,
semantic maps, COCO parts and panoptic, COCO detection, generation pairs, editing triples). The two box tasks
read the split's COCO instances: ``detection`` asks for every object of one class (shapes and composites, not
parts; also classes the scene lacks, answered with no box), ``referring_box`` for the box of one referred
object (refCOCO's refs, ``<det>`` instead of ``<seg>``).
"""

from __future__ import annotations

import fcntl
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
from torch.utils.data import Dataset

from omniplug.registry import DATASETS

WorldTask = Literal["caption_vqa", "referring", "reasoning", "semantic", "part", "panoptic", "generation", "editing",
                    "detection", "referring_box"]


def _written_once(root: str | Path, want: dict[str, Any], write: Callable[[Path], Any], *, what: str) -> Path:
    """Write data into ``root`` (``write(root)``) unless its ``meta.json`` already says ``want``; another
    ``want`` there is an error. A lock beside ``root`` makes it safe across processes."""
    root = Path(root).expanduser().resolve()
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta_path = root / "meta.json"
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            got = {k: meta.get(k, meta.get("config", {}).get(k)) for k in want}
            if got != want:
                raise ValueError(f"{what} at {root} was written with {got}, the config asks for {want}; "
                                 f"delete the folder or point the dataset elsewhere")
            return root
        write(root)
    return root


def ensure_split(*, root: str | Path, split: str, n: int, seed: int, size: int = 64) -> Path:
    """Generate the split into ``root`` unless an identical one is there; safe across processes."""
    from omniplug.data.world import WorldConfig, write_split
    from omniplug.data.world.writers import default_workers

    return _written_once(root, {"split": split, "n": n, "seed": seed, "size": size}, what="world data",
                         write=lambda out: write_split(out_dir=out, n=n, seed=seed, split=split,
                                                       config=WorldConfig(size=size), overwrite=True, progress=True,
                                                       workers=default_workers(n)))


def ensure_clips(*, root: str | Path, split: str, n: int, seed: int) -> Path:
    """Write the clip split (``omniplug world clips``) into ``root`` unless an identical one is there."""
    from omniplug.data.world.clips import write_clips

    return _written_once(root, {"kind": "clips", "split": split, "n": n, "seed": seed}, what="clip data",
                         write=lambda out: write_clips(out_dir=out, n=n, seed=seed, split=split, overwrite=True))


def _reader(task: str, root: Path, options: dict[str, Any]) -> Dataset:
    from omniplug.data.coco_detection import CocoDetectionDataset
    from omniplug.data.coco_panoptic import CocoPanopticDataset
    from omniplug.data.coco_parts import CocoPartsDataset
    from omniplug.data.generation import EditingTriples, GenerationPairs
    from omniplug.data.llava_json import LlavaJsonDataset
    from omniplug.data.reason_seg import ReasonSegDataset
    from omniplug.data.refcoco import RefCocoDataset
    from omniplug.data.semantic_seg import SemanticSegDataset

    split = json.loads((root / "meta.json").read_text())["split"]
    if task == "caption_vqa":
        return LlavaJsonDataset(data_path=str(root / "llava.json"), image_dir=str(root), name="caption_vqa", **options)
    if task == "referring":
        return RefCocoDataset(data_dir=str(root), split=split, name="referring", **options)
    if task == "reasoning":
        return ReasonSegDataset(data_dir=str(root / "reason_seg"), name="reasoning", **options)
    if task == "semantic":
        return SemanticSegDataset(data_dir=str(root), label_dir="semantic", classes_file="semantic_classes.json",
                                  ignore_index=0, ignore_classes=("unlabelled",), name="semantic", **options)
    if task == "part":
        return CocoPartsDataset(data_dir=str(root), name="part", **options)
    if task == "panoptic":
        return CocoPanopticDataset(data_dir=str(root), name="panoptic", **options)
    if task == "detection":
        return CocoDetectionDataset(data_dir=str(root), **{"supercategories": ("shape", "composite"), "name": "detection",
                                                           **options})
    if task == "referring_box":
        return RefCocoDataset(data_dir=str(root), split=split, target="box", **{"seg_token": "<det>", "task": "det",
                                                                                "name": "referring_box", **options})
    if task == "generation":
        return GenerationPairs(data_dir=str(root), **options)
    return EditingTriples(data_dir=str(root), **options)


def _image_name(meta: dict[str, Any]) -> str:
    """The scene file a sample's (first) image was read from."""
    if "file_name" in meta:
        return Path(meta["file_name"]).name
    return f"{str(meta['id']).split(':')[0]}.png"  # caption_vqa and editing samples are keyed by scene id


@DATASETS.register("world")
class WorldTaskDataset(Dataset):
    """``task`` picks the reader; ``options`` are passed to it (e.g. ``num_tokens`` for generation).
    ``dense_labels``: attach the scene's dense labels to every sample with an image, for dense
    perception heads (``omniplug.heads.dense``): (3, H, W) category (``semantic_classes.json``, 12), part (8)
    and colour (9) per pixel, rendered from ``scenes.jsonl`` (``Rendering.dense_labels``).
    ``object_focus`` (task ``generation``): each target gets its scene's visible object pixels as
    ``GenerationTarget.focus``, for a diffusion decoder's ``focus_weight``.
    ``brief_every`` (task ``generation``): every k-th sample (index divisible by k) asks for its
    objects alone, without the background ("Draw a small red circle."), cycling the reader's phrasings,
    so short drawing requests are met as well as the world's full captions; the target is unchanged."""

    def __init__(self, *, root: str, task: WorldTask, split: str = "train", n: int = 2000, seed: int = 0,
                 size: int = 64, options: dict[str, Any] | None = None, dense_labels: bool = False,
                 object_focus: bool = False, brief_every: int = 0) -> None:
        if object_focus and task != "generation":
            raise ValueError(f"dataset world: object_focus is for task generation (description -> image), not {task!r}")
        if brief_every and task != "generation":
            raise ValueError(f"dataset world: brief_every is for task generation (description -> image), not {task!r}")
        if brief_every < 0:
            raise ValueError(f"dataset world: brief_every must be >= 0 (0: never), got {brief_every}")
        self.root = ensure_split(root=root, split=split, n=n, seed=seed, size=size)
        self.task = task
        self.reader = _reader(task, self.root, dict(options or {}))
        self.dense_labels = dense_labels
        self.object_focus = object_focus
        self.brief_every = brief_every

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, idx: int):
        sample = self.reader[idx]
        if self.dense_labels and sample.images:
            sample.label_map = self.label_map(_image_name(sample.meta))
        if self.object_focus:
            from omniplug.data.world import render_scene
            from omniplug.data.world.scene import Scene

            focus = render_scene(Scene.from_json(sample.meta["scene"])).owner >= 0
            for target in next(iter(sample.targets.values())):
                target.focus = focus
        if self.brief_every:
            self._phrase(sample, idx)
        return sample

    def _phrase(self, sample, idx: int) -> None:
        """Every ``brief_every``-th request names the scene's objects only. Brief and full requests each
        cycle through every phrasing on their own, whatever ``brief_every`` and the number of phrasings
        (indexing both by ``idx`` would give the full requests only some phrasings: with k = 2 and six,
        only the odd ones)."""
        from dataclasses import replace

        from omniplug.data.generation import draw_prompt
        from omniplug.data.world.language import caption
        from omniplug.data.world.scene import Scene

        k = self.brief_every
        brief = idx % k == 0
        text = caption(Scene.from_json(sample.meta["scene"]), bare=True, stuff=not brief)
        ordinal = idx // k if brief else idx - idx // k - 1  # this request's place among its kind
        prompt = draw_prompt(text, self.reader.prompts, ordinal)
        sample.turns[0] = replace(sample.turns[0], text=prompt)
        sample.meta["prompt"] = prompt

    def label_map(self, name: str) -> np.ndarray:
        from omniplug.data.world import render_scene

        scenes = _scenes(self.root)
        index = int(Path(name).stem)
        if not 0 <= index < len(scenes):
            raise FileNotFoundError(f"dataset world: {self.root / 'scenes.jsonl'} has no scene {index} (image {name}); "
                                    f"regenerate the split (omniplug world generate)")
        return render_scene(scenes[index]).dense_labels()


@lru_cache(maxsize=4)
def _scenes(root: Path) -> list:
    """The split's scenes, read once per process (shared by every task's dataset of that split)."""
    from omniplug.data.world import read_scenes

    return read_scenes(root)

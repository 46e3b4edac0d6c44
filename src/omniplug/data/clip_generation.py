"""Readers of a clip split of the moving world (``omniplug world clips``, YouTube-VIS-style ``clips.json``):
``clip_generation`` (text -> clip), ``clip_qa`` (a clip read as several images: direction questions, captions)
and ``clip_segmentation`` (a mover's mask in every frame, in one answer). Each writes the split on first use
when given its ``split``, ``n`` and ``seed`` (as the ``world`` reader does), and reads an existing one otherwise.

``clip_generation``: the user asks for the clip (the split's generation prompt, "Make a clip of a red circle
moving left."); the assistant answers with the video tokens ``<vid_0> .. <vid_{K-1}>``; the target is the clip's
frames (``video_diffusion.ClipTarget``), with its caption.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from omniplug.data.conversation import Turn
from omniplug.data.generation import gen_tokens
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS


def clip_split(data_dir: str, *, split: str | None, n: int | None, seed: int) -> Path:
    """``data_dir``, written first (``omniplug world clips``) when ``n`` is given and it holds no split yet."""
    if n is None:
        return Path(data_dir).expanduser()
    from omniplug.data.world_tasks import ensure_clips

    if split is None:
        raise ValueError("a clip split generated on first use needs its split name (split: train / val / test / holdout)")
    return ensure_clips(root=data_dir, split=split, n=n, seed=seed)


def read_videos(root: Path) -> list[dict]:
    """The ``videos`` of a clip split's ``clips.json``; a folder without one says how to write it."""
    index = root / "clips.json"
    if not index.is_file():
        raise FileNotFoundError(f"{index} not found: write a clip split with `omniplug world clips --out {root}`")
    return json.loads(index.read_text())["videos"]


@DATASETS.register("clip_generation")
class ClipGeneration(Dataset):
    def __init__(self, *, data_dir: str, answer: str = "{vid}", token: str = "<vid>", num_tokens: int = 4,
                 task: str = "vid", max_samples: int | None = None, split: str | None = None, n: int | None = None,
                 seed: int = 0) -> None:
        self.root = clip_split(data_dir, split=split, n=n, seed=seed)
        if "{vid}" not in answer:
            raise ValueError("clip_generation: answer must contain {vid} (where the video tokens go)")
        self.videos = read_videos(self.root)[:max_samples]
        self.answer, self.task = answer, task
        self.vid = "".join(gen_tokens(token, num_tokens))  # a run: no spaces between

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> Sample:
        from omniplug.decoders.video_diffusion import ClipTarget

        video = self.videos[index]
        frames = []
        for name in video["file_names"]:
            with Image.open(self.root / name) as im:
                frames.append(im.convert("RGB"))
        turns = [Turn("user", video["prompt"]), Turn("assistant", self.answer.format(vid=self.vid))]
        return Sample(turns=turns, targets={self.task: [ClipTarget(frames=frames, caption=video["caption"])]},
                      meta={"dataset": "clip_generation", "id": video["id"], "caption": video["caption"],
                            "prompt": video["prompt"], "motions": video["motions"]})


@DATASETS.register("clip_qa")
class ClipQA(Dataset):
    """A clip read as several images: its frames are the user turn's images, followed by a question about what
    happens ("Which way does the red circle move?" -> "left"; "it stays" for a still object) or, with
    ``captions``, a request for the caption ("Describe what happens in these frames." -> "A red circle moves left.").
    Sample ``i`` is clip ``i // per_clip``'s ``i % per_clip``-th item (questions first, then the caption)."""

    CAPTION_PROMPT = "Describe what happens in these frames."

    def __init__(self, *, data_dir: str, captions: bool = True, frames: int | None = None,
                 max_samples: int | None = None, split: str | None = None, n: int | None = None,
                 seed: int = 0) -> None:
        self.root = clip_split(data_dir, split=split, n=n, seed=seed)
        if frames is not None and frames < 1:
            raise ValueError(f"clip_qa: frames must be >= 1 (frames shown per clip, evenly spaced), got {frames}")
        self.frames = frames
        self.items: list[tuple[dict, str, str]] = []
        for video in read_videos(self.root):
            for qa in video["questions"]:
                self.items.append((video, qa["question"], qa["answer"]))
            if captions:
                self.items.append((video, self.CAPTION_PROMPT, video["caption"]))
        self.items = self.items[:max_samples]

    def __len__(self) -> int:
        return len(self.items)

    def frame_names(self, video: dict) -> list[str]:
        from omniplug.data.images import evenly_spaced

        names = video["file_names"]
        return [names[i] for i in evenly_spaced(len(names), self.frames)]

    def __getitem__(self, index: int) -> Sample:
        video, question, answer = self.items[index]
        images = []
        for name in self.frame_names(video):
            with Image.open(self.root / name) as im:
                images.append(im.convert("RGB"))
        turns = [Turn("user", question, images=len(images)), Turn("assistant", answer)]
        return Sample(turns=turns, images=images, meta={"dataset": "clip_qa", "id": video["id"], "question": question,
                                                        "answer": answer})


@DATASETS.register("clip_segmentation")
class ClipSegmentation(Dataset):
    """Segmentation over time in one answer: a clip's ``frames`` evenly spaced frames are the images of one turn,
    the user asks for a mover in every frame ("Please segment the red circle in every frame."), the answer holds
    one ``<seg>`` per frame ("Sure, <seg> <seg> <seg> <seg>.") and the targets are that mover's visible mask in each
    frame, in order. Needs a mask decoder with ``frame_per_occurrence: true`` (occurrence k reads frame k).
    One sample per mover of each clip."""

    PROMPT = "Please segment {phrase} in every frame."

    def __init__(self, *, data_dir: str, frames: int | None = 4, task: str = "seg", token: str = "<seg>",
                 max_samples: int | None = None, split: str | None = None, n: int | None = None,
                 seed: int = 0) -> None:
        from omniplug.data.images import evenly_spaced
        from omniplug.data.world.clips import mover_phrase, read_clips

        self.root = clip_split(data_dir, split=split, n=n, seed=seed)
        if frames is not None and frames < 1:
            raise ValueError(f"clip_segmentation: frames must be >= 1, got {frames}")
        data = json.loads((self.root / "clips.json").read_text())
        tracks = {(a["video_id"], a["object_id"]): a["segmentations"] for a in data["annotations"]}
        self.task, self.token = task, token
        self.items: list[tuple[dict, str, list[int], list]] = []
        for clip, video in zip(read_clips(self.root), data["videos"]):
            picks = evenly_spaced(len(video["file_names"]), frames)
            for k, motion in enumerate(clip.motions):
                rles = tracks[(video["id"], motion.object_id)]
                self.items.append((video, mover_phrase(clip, k), picks, [rles[i] for i in picks]))
        self.items = self.items[:max_samples]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Sample:
        from omniplug.data.world.masks import decode_rle

        video, phrase, picks, rles = self.items[index]
        images = []
        for i in picks:
            with Image.open(self.root / video["file_names"][i]) as im:
                images.append(im.convert("RGB"))
        answer = "Sure, " + " ".join([self.token] * len(picks)) + "."
        turns = [Turn("user", self.PROMPT.format(phrase=phrase), images=len(images)), Turn("assistant", answer)]
        return Sample(turns=turns, images=images, targets={self.task: [decode_rle(r) for r in rles]},
                      meta={"dataset": "clip_segmentation", "id": video["id"], "phrase": phrase, "frames": picks})


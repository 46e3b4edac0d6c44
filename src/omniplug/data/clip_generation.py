"""Reader ``clip_generation``: text -> clip pairs from a clip split of the moving world
(``omniplug world clips``, YouTube-VIS-style ``clips.json``).

The user asks for the clip (the split's generation prompt, "Make a clip of a red circle moving left.");
the assistant answers with the video tokens ``<vid_0> .. <vid_{K-1}>``; the target is the clip's frames
(``video_diffusion.ClipTarget``), with its caption.
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


@DATASETS.register("clip_generation")
class ClipGeneration(Dataset):
    def __init__(self, *, data_dir: str, answer: str = "{vid}", token: str = "<vid>", num_tokens: int = 4,
                 task: str = "vid", max_samples: int | None = None) -> None:
        self.root = Path(data_dir).expanduser()
        index = self.root / "clips.json"
        if not index.is_file():
            raise FileNotFoundError(f"{index} not found: write a clip split with `omniplug world clips --out {self.root}`")
        if "{vid}" not in answer:
            raise ValueError("clip_generation: answer must contain {vid} (where the video tokens go)")
        self.videos = json.loads(index.read_text())["videos"][:max_samples]
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

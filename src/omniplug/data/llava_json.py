"""Dataset ``llava_json``: LLaVA-Instruct conversation files, for co-training without decoder targets.

Format (LLaVA's ``llava_instruct_150k.json`` and friends)::

    [{"id": "000000033471", "image": "000000033471.jpg",
      "conversations": [{"from": "human", "value": "<image>\\nWhat are the colors of the bus?"},
                        {"from": "gpt", "value": "The bus is white and red."}, ...]}, ...]

``image`` may be missing (text-only), a file name relative to ``image_dir``, or a list of them.
Each ``<image>`` in a human turn places one image there (LLaVA puts them before the text); a
sample with an image but no placeholder gets it in its first human turn.

``shuffle_turns: true`` puts the question/answer exchanges of each record in a random order (fixed
per record index and ``seed``, so a resumed run sees the same samples), the images moving to the new
first question. For data whose conversations always open with the same kind of question (the
world's open with a caption request): without it a model never sees the other questions asked
first, and answers them as if asked for a caption.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from omniplug.data.conversation import IMAGE_PLACEHOLDER, Turn, split_image_placeholders
from omniplug.data.images import open_image
from omniplug.data.sample import Sample
from omniplug.registry import DATASETS

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@DATASETS.register("llava_json")
class LlavaJsonDataset(Dataset):
    kind = "llava_json"

    def __init__(self, *, data_path: str, image_dir: str | None = None, max_samples: int | None = None,
                 shuffle_turns: bool = False, seed: int = 0, name: str = "llava_json") -> None:
        path = Path(data_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"dataset llava_json: data_path {path} not found (a LLaVA conversation JSON file)")
        try:
            records = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"dataset llava_json: {path} is not valid JSON: {exc}") from None
        if not isinstance(records, list):
            raise ValueError(f"dataset llava_json: {path} must hold a JSON list of {{id, image, conversations}} records")
        self.path = path
        self.image_dir = Path(image_dir).expanduser() if image_dir else path.parent
        self.records = records[:max_samples] if max_samples is not None else records
        self.name = name
        self.shuffle_turns, self.seed = shuffle_turns, seed
        for i, rec in enumerate(self.records[:1000]):  # cheap early check of the format
            self._check(rec, i)

    def __len__(self) -> int:
        return len(self.records)

    def _check(self, rec: Any, i: int) -> None:
        where = f"dataset {self.kind}: {self.path} record {i}"
        if not isinstance(rec, dict) or not isinstance(rec.get("conversations"), list) or not rec["conversations"]:
            raise ValueError(f"{where}: expected {{'id', 'image' (optional), 'conversations': [{{from, value}}, ...]}}")
        for turn in rec["conversations"]:
            if not isinstance(turn, dict) or turn.get("from") not in _ROLES or not isinstance(turn.get("value"), str):
                raise ValueError(f"{where}: each turn needs 'from' (human|gpt) and a string 'value', got {turn!r}")
            if _ROLES[turn["from"]] == "assistant" and IMAGE_PLACEHOLDER in turn["value"]:
                raise ValueError(f"{where}: an assistant turn contains {IMAGE_PLACEHOLDER!r}; images go in human turns")

    def __getitem__(self, idx: int) -> Sample:
        rec = self.records[idx]
        files = rec.get("image") or [] if isinstance(rec, dict) else []
        files = [files] if isinstance(files, str) else list(files)
        return self._to_sample(rec, idx, files, lambda: [open_image(self.image_dir / f) for f in files])

    def _to_sample(self, rec: Any, idx: int, files: list, load_images) -> Sample:
        """One record -> a Sample; ``files`` names its images (their count places them), ``load_images()``
        decodes them once the record has passed its checks."""
        self._check(rec, idx)
        turns: list[Turn] = []
        placed = 0
        for raw in rec["conversations"]:
            role = _ROLES[raw["from"]]
            if role == "user":
                n, text = split_image_placeholders(raw["value"])
                turns.append(Turn(role="user", text=text, images=n))
                placed += n
            else:
                turns.append(Turn(role="assistant", text=raw["value"].strip()))
        if files and placed == 0:
            first = next((i for i, t in enumerate(turns) if t.role == "user"), None)
            if first is None:
                raise ValueError(f"dataset {self.kind}: {self.path} record {idx} has an image but no human turn")
            turns[first] = Turn(role="user", text=turns[first].text, images=len(files))
            placed = len(files)
        if placed != len(files):
            raise ValueError(f"dataset {self.kind}: {self.path} record {idx} (id {rec.get('id')!r}) places {placed} "
                             f"{IMAGE_PLACEHOLDER} but lists {len(files)} image file(s)")
        if self.shuffle_turns:
            turns = self._shuffled(turns, idx)
        images = load_images()
        return Sample(turns=turns, images=images, meta={"dataset": self.name, "id": rec.get("id", idx)})

    def _shuffled(self, turns: list[Turn], idx: int) -> list[Turn]:
        """Exchanges (user, assistant) in a per-record random order; every image on the new first question."""
        roles = [t.role for t in turns]
        if len(turns) < 4 or len(turns) % 2 or roles != ["user", "assistant"] * (len(turns) // 2):
            return turns  # not plain alternating exchanges: kept as written
        n_images = sum(t.images for t in turns)
        pairs = [turns[i: i + 2] for i in range(0, len(turns), 2)]
        order = np.random.default_rng((self.seed, idx)).permutation(len(pairs))
        out = [t for k in order for t in pairs[k]]
        out = [Turn(role=t.role, text=t.text, images=0) if t.role == "user" else t for t in out]
        out[0] = Turn(role="user", text=out[0].text, images=n_images)
        return out

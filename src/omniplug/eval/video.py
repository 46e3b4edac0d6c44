"""Scores of clips a model generates for a clip split of the moving world (``omniplug world clips``).

Each clip's generation prompt ("Make a clip of a red circle moving left.") is asked; the clip the video
decoder returns is read back from its pixels (``omniplug.data.world.clip_score``): per-frame object F1
against the clip's objects, motion accuracy (each mover's centroid track goes the stated way) and temporal
consistency (frames with every object found exactly once). A prompt answered without a clip scores 0.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample


def is_clip_split(path: str | Path) -> bool:
    meta = Path(path) / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("kind") == "clips"


def video_task(model) -> str | None:
    return next((task for task, d in model.decoders.items() if getattr(d, "output_kind", "") == "videos"), None)


def evaluate_clips(model, clips_dir: str | Path, *, n: int = 100, batch_size: int = 4,
                   max_new_tokens: int = 16) -> dict[str, float]:
    from omniplug.data.world.clip_score import score_clip
    from omniplug.data.world.clips import read_clips
    from omniplug.eval.world import _answer, _batches

    task = video_task(model)
    if task is None:
        raise ValueError("this model has no video decoder (output_kind 'videos'); add one, e.g. type: video_diffusion")
    root = Path(clips_dir)
    clips = read_clips(root)[:n]
    prompts = [v["prompt"] for v in json.loads((root / "clips.json").read_text())["videos"]][:n]
    rows = []
    for chunk in _batches(list(zip(clips, prompts)), batch_size):
        gen = _answer(model, [Sample(turns=[Turn("user", p)]) for _, p in chunk], max_new_tokens=max_new_tokens)
        for (clip, _), outputs in zip(chunk, gen.decoder_outputs.get(task, [[] for _ in chunk])):
            if not outputs:
                rows.append((0.0, 0.0, 0.0, 0))
                continue
            score = score_clip([np.asarray(f.convert("RGB")) for f in outputs[0]], clip)
            rows.append((score.frame_f1, score.motion_accuracy, score.consistency, 1))
    table = np.array(rows, dtype=float).reshape(-1, 4)
    mean = table.mean(0) if len(table) else np.zeros(4)
    return {"frame_f1": float(mean[0]), "motion_accuracy": float(mean[1]), "consistency": float(mean[2]),
            "answered": float(mean[3]), "n": len(rows)}

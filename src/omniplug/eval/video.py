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
    from omniplug.data.clip_generation import read_videos
    from omniplug.data.world.clip_score import score_clip
    from omniplug.data.world.clips import read_clips
    from omniplug.eval.world import _answer, _batches

    task = video_task(model)
    if task is None:
        raise ValueError("this model has no video decoder (output_kind 'videos'); add one, e.g. type: video_diffusion")
    root = Path(clips_dir)
    clips = read_clips(root)[:n]
    prompts = [v["prompt"] for v in read_videos(root)][:n]
    from omniplug.data.world.clip_score import ground_truth_frames

    rows, read, made, true = [], [], [], []
    for chunk in _batches(list(zip(clips, prompts)), batch_size):
        gen = _answer(model, [Sample(turns=[Turn("user", p)]) for _, p in chunk], max_new_tokens=max_new_tokens)
        for (clip, _), outputs in zip(chunk, gen.decoder_outputs.get(task, [[] for _ in chunk])):
            if not outputs:
                rows.append((0.0, 0.0, 0.0, 0))
                read.extend([None] * len(clip.motions))
                continue
            frames = [np.asarray(f.convert("RGB")) for f in outputs[0]]
            if len(made) < 32:  # for the spread of what different prompts make
                made.append(np.stack(frames).astype(np.float32))
                true.append(np.stack(ground_truth_frames(clip)).astype(np.float32))
            score = score_clip(frames, clip)
            rows.append((score.frame_f1, score.motion_accuracy, score.consistency, 1))
            read.extend(score.directions)
    table = np.array(rows, dtype=float).reshape(-1, 4)
    mean = table.mean(0) if len(table) else np.zeros(4)
    # what a generator blind to the stated direction would score with the same clips: its movers move (some way)
    # as often, each of the four ways equally likely
    moving = float(np.mean([d in ("left", "right", "up", "down") for d in read])) if read else 0.0
    return {"frame_f1": float(mean[0]), "motion_accuracy": float(mean[1]), "consistency": float(mean[2]),
            "answered": float(mean[3]), "movers_moving": moving, "direction_blind_accuracy": moving / 4,
            "prompt_spread": prompt_spread(made, true), "n": len(rows)}


def prompt_spread(made: list[np.ndarray], true: list[np.ndarray]) -> float:
    """How much the clips made for different prompts differ, against how much their true clips differ: the mean
    absolute pixel difference between consecutive clips, made over true. ~1: as varied as the data; ~0: every
    prompt gets the same clip (the conditioning collapsed). 0 with fewer than two clips."""
    if len(made) < 2:
        return 0.0
    gap = lambda clips: float(np.mean([np.abs(a - b).mean() for a, b in zip(clips, clips[1:])]))  # noqa: E731
    return gap(made) / max(gap(true), 1e-6)


# --- segmentation over time (a clip as input, one mask per frame) ----------------------------------------------
def boundary_f(pred: np.ndarray, gold: np.ndarray, *, tolerance: float = 0.008) -> float:
    """DAVIS's contour accuracy F: precision and recall of the predicted boundary against the true one, each
    boundary pixel counting as matched within ``tolerance`` x the image diagonal (at least 1 pixel) of the other."""
    from scipy import ndimage

    pred, gold = np.asarray(pred, bool), np.asarray(gold, bool)
    if pred.shape != gold.shape:
        raise ValueError(f"prediction {pred.shape} and target {gold.shape} masks differ in shape")
    edge = lambda m: m & ~ndimage.binary_erosion(m, border_value=0)  # noqa: E731
    bp, bg = edge(pred), edge(gold)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    radius = max(1, int(np.ceil(tolerance * np.hypot(*pred.shape))))
    disk = ndimage.generate_binary_structure(2, 1)
    grow = lambda m: ndimage.binary_dilation(m, structure=disk, iterations=radius)  # noqa: E731
    precision = float((bp & grow(bg)).sum() / bp.sum())
    recall = float((bg & grow(bp)).sum() / bg.sum())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def region_j(pred: np.ndarray, gold: np.ndarray) -> float:
    """DAVIS's region similarity J: the IoU of the two masks (1 when both are empty)."""
    from omniplug.eval.segmentation import mask_iou

    return mask_iou(pred, gold)[2]


def segment_over_time(pipe, clips_dir: str | Path, *, n: int = 50, prompt: str | None = None,
                      one_answer: bool = False, frames: int | None = None) -> dict:
    """For each clip's first mover, ask for its mask in every frame and score the masks against the true per-frame
    masks: J, F and J&F (DAVIS / MeViS). ``frames``: that many evenly spaced frames (default all). Per frame, one
    request a frame ("Please segment {phrase}.", answered together through continuous batching); ``one_answer``:
    every frame in one request ("Please segment {phrase} in every frame.", a model with ``frame_per_occurrence``
    answering one mask per frame)."""
    if prompt is None:
        prompt = "Please segment {phrase} in every frame." if one_answer else "Please segment {phrase}."
    from omniplug.data.images import evenly_spaced
    from omniplug.data.world.clips import mover_phrase, read_clips
    from omniplug.data.world.masks import decode_rle
    from omniplug.infer.pipeline import Options, Request
    from PIL import Image

    root = Path(clips_dir)
    data = json.loads((root / "clips.json").read_text())
    clips = read_clips(root)[:n]
    tracks = {(a["video_id"], a["object_id"]): a for a in data["annotations"]}
    js, fs, answered, total = [], [], 0, 0
    for clip, video in zip(clips, data["videos"]):
        phrase = mover_phrase(clip)
        picks = evenly_spaced(len(video["file_names"]), frames)
        images = [Image.open(root / video["file_names"][i]).convert("RGB") for i in picks]
        masks = tracks[(video["id"], clip.motions[0].object_id)]["segmentations"]
        gold = [decode_rle(masks[i]) for i in picks]
        if one_answer:  # every frame in one request, one mask per frame in the answer
            response = pipe.batch([Request(prompt.format(phrase=phrase), images,
                                           options=Options(max_new_tokens=8 + 2 * len(images)))])[0]
            preds = [m.mask for m in response.masks[: len(images)]]
        else:  # one request per frame, answered together
            requests = [Request(prompt.format(phrase=phrase), [im], options=Options(max_new_tokens=16)) for im in images]
            preds = [r.masks[0].mask if r.masks else None for r in pipe.batch(requests)]
        preds += [None] * (len(gold) - len(preds))
        for pred, truth in zip(preds, gold):
            total += 1
            answered += pred is not None
            pred = np.zeros_like(truth) if pred is None else pred
            js.append(region_j(pred, truth))
            fs.append(boundary_f(pred, truth))
    j, f = (float(np.mean(js)), float(np.mean(fs))) if js else (0.0, 0.0)
    return {"J": j, "F": f, "J&F": (j + f) / 2, "answered": answered / total if total else 0.0,
            "clips": len(clips), "frames": total}


# --- a clip as input: questions and captions ------------------------------------------------------------------
def answer_clip_questions(model, clips_dir: str | Path, *, n: int = 100, batch_size: int = 4,
                          frames: int | None = 4) -> dict[str, float]:
    """Direction questions about clips read as several images (``clip_qa``; ``frames`` evenly spaced frames, first
    and last included): exact-answer accuracy, and caption accuracy (the clip's caption word for word, case and
    final period aside)."""
    from omniplug.data.clip_generation import ClipQA
    from omniplug.eval.world import _answer, _batches

    data = ClipQA(data_dir=str(clips_dir), frames=frames)
    items = [i for i, (_, q, _) in enumerate(data.items) if data.items[i][0]["id"] < n]
    norm = lambda t: " ".join(t.lower().strip().rstrip(".").split())  # noqa: E731
    right = {"question": [], "caption": []}
    answers: list[str] = []
    for chunk in _batches(items, batch_size):
        samples = [data[i] for i in chunk]
        asked = [type(s)(turns=s.turns[:1], images=s.images) for s in samples]
        gen = _answer(model, asked, max_new_tokens=24)
        for i, text in zip(chunk, gen.texts):
            _, question, answer = data.items[i]
            kind = "caption" if question == ClipQA.CAPTION_PROMPT else "question"
            right[kind].append(norm(text) == norm(answer))
            if kind == "question":
                answers.append(norm(answer))
    commonest = max(answers.count(a) for a in set(answers)) / len(answers) if answers else 0.0
    return {"direction_accuracy": float(np.mean(right["question"])) if right["question"] else 0.0,
            "direction_commonest_answer": commonest,  # always answering the split's commonest answer
            "caption_exact": float(np.mean(right["caption"])) if right["caption"] else 0.0,
            "questions": len(right["question"]), "captions": len(right["caption"])}

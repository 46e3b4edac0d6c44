"""Evaluation of a model on the procedural world, one figure per task (the default model's table).

Every figure comes from the model's own answers (greedy generation), not teacher forcing:

* caption — object F1 between the objects named in the generated caption and the scene's;
* vqa — exact-match accuracy of the short answers;
* referring — cIoU; reasoning — gIoU (LISA's definitions; a missing mask counts as empty);
* semantic, part — mIoU over classes (intersection and union summed per class over the set);
* panoptic — PQ (COCO panoptic quality: segments matched when same label and IoU > 0.5,
  PQ = sum IoU(TP) / (TP + FP/2 + FN/2) per category, averaged over categories that occur);
  the model lists every region with its label, one ``<seg>`` each;
* detection — COCO AP50 and mAP@[.5:.95] (pycocotools) of the boxes answered for "Detect every <class>."
  (each request is its own COCO image: a prompt-conditioned detector answers one request at a time);
  referring_box — the refCOCO box protocol: the top-scoring box of "Where is the <ref>? Give its box." is
  right when its IoU with the referred object's box is >= 0.5;
* generation — the world's image analyser parses each generated image; ``exact`` = the image
  holds exactly the captioned objects, ``object_f1`` = F1 of the objects found; ``colour_f1`` (a
  diagnostic, shapes ignored) = F1 of the described colours present as regions (``colour_score``);
  ``answered`` = the share of requests answered with a picture at all.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from omniplug.data.collate import Collator
from omniplug.data.conversation import Turn
from omniplug.data.images import open_image
from omniplug.data.sample import Sample

TASKS = ("caption", "vqa", "referring", "reasoning", "semantic", "part", "panoptic", "detection", "referring_box",
         "generation")


def _batches(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


@torch.no_grad()
def _answer(model, samples: Sequence[Sample], *, max_new_tokens: int):
    collate = Collator(model, for_generation=True)
    device = next(model.parameters()).device
    return model.generate(collate(list(samples)).to(device), max_new_tokens=max_new_tokens)


def _seg_task(model) -> str:
    for task, dec in model.decoders.items():
        if getattr(dec, "output_kind", "") == "masks":
            return task
    raise ValueError("this model has no mask decoder")


def _box_task(model) -> str:
    for task, dec in model.decoders.items():
        if getattr(dec, "output_kind", "") == "boxes":
            return task
    raise ValueError("this model has no box decoder")


def _gen_task(model) -> str | None:
    for task, dec in model.decoders.items():
        if getattr(dec, "output_kind", "") == "images":
            return task
    return None


# ---- text tasks ---------------------------------------------------------------------------------
def _conversation_pairs(data_dir: Path) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """(image path, question, answer) for captions (first exchange) and VQA (the others)."""
    records = json.loads((data_dir / "llava.json").read_text())
    captions, vqa = [], []
    for rec in records:
        conv = rec["conversations"]
        pairs = [(conv[i]["value"].replace("<image>", "").strip(), conv[i + 1]["value"]) for i in range(0, len(conv) - 1, 2)]
        image = str(data_dir / rec["image"])
        if pairs:
            captions.append((image, *pairs[0]))
            vqa.extend((image, q, a) for q, a in pairs[1:])
    return captions, vqa


def _text_samples(items: Sequence[tuple[str, str, str]]) -> list[Sample]:
    return [Sample(turns=[Turn("user", q, images=1)], images=[open_image(p)]) for p, q, _ in items]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9 ]+", "", text.lower()).strip()


def eval_caption(model, data_dir: Path, *, n: int, batch_size: int) -> dict[str, float]:
    from omniplug.data.world import parse_caption

    items = _conversation_pairs(data_dir)[0][:n]
    tp = fp = fn = 0
    for chunk in _batches(items, batch_size):
        gen = _answer(model, _text_samples(chunk), max_new_tokens=64)
        for (_, _, ref), text in zip(chunk, gen.texts):
            pred = Counter((o.category, o.colour, o.size) for o in parse_caption(text))
            gold = Counter((o.category, o.colour, o.size) for o in parse_caption(ref))
            hit = sum((pred & gold).values())
            tp, fp, fn = tp + hit, fp + sum(pred.values()) - hit, fn + sum(gold.values()) - hit
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"object_f1": f1, "n": len(items)}


def eval_vqa(model, data_dir: Path, *, n: int, batch_size: int) -> dict[str, float]:
    items = _conversation_pairs(data_dir)[1][:n]
    correct = 0
    for chunk in _batches(items, batch_size):
        gen = _answer(model, _text_samples(chunk), max_new_tokens=8)
        correct += sum(_norm(text) == _norm(ref) for (_, _, ref), text in zip(chunk, gen.texts))
    return {"accuracy": correct / len(items) if items else 0.0, "n": len(items)}


def image_reliance(model, data_dir: Path, *, n: int, batch_size: int) -> dict[str, float]:
    """Does the model look at the image? Teacher-forced LM loss of caption/VQA answers with each
    sample's own image and with the images of the batch rotated by one (another scene's). A model
    that ignores its vision tower scores ``gap`` ~ 0 however fluent its answers are."""
    from omniplug.data.world_tasks import _reader

    if model.encoder is None:
        return {}
    reader = _reader("caption_vqa", Path(data_dir), {})
    items = [reader[i] for i in range(min(n, len(reader)))]
    collate = Collator(model, max_length=512)
    own = other = 0.0
    counted = 0
    with torch.no_grad():
        for chunk in _batches(items, max(batch_size, 2)):
            if len(chunk) < 2:
                continue
            batch = collate(list(chunk)).to(next(model.parameters()).device)
            own += float(model(batch).lm_loss) * len(chunk)
            batch.pixel_values = batch.pixel_values.roll(1, 0)
            other += float(model(batch).lm_loss) * len(chunk)
            counted += len(chunk)
    if not counted:
        return {}
    return {"lm_loss": own / counted, "lm_loss_other_image": other / counted, "gap": (other - own) / counted, "n": counted}


# ---- segmentation tasks -------------------------------------------------------------------------
def _predicted_masks(model, chunk: Sequence[Sample], task: str):
    gen = _answer(model, [Sample(turns=s.turns[:-1], images=s.images) for s in chunk], max_new_tokens=96)
    return gen, gen.decoder_outputs.get(task, [[] for _ in chunk])


def _iou_parts(pred: np.ndarray, gold: np.ndarray) -> tuple[int, int]:
    return int(np.logical_and(pred, gold).sum()), int(np.logical_or(pred, gold).sum())


def eval_masks(model, dataset, *, n: int, batch_size: int, per_class: bool) -> dict[str, float]:
    """cIoU / gIoU over the first mask of each sample; with ``per_class`` also mIoU by meta label."""
    task = _seg_task(model)
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    inter = union = 0
    ious: list[float] = []
    cls_i: dict[str, int] = defaultdict(int)
    cls_u: dict[str, int] = defaultdict(int)
    for chunk in _batches(items, batch_size):
        _, preds = _predicted_masks(model, chunk, task)
        for sample, pred_list in zip(chunk, preds):
            gold = np.asarray(sample.targets[task][0], dtype=bool)
            pred = np.asarray(pred_list[0].mask, dtype=bool) if pred_list else np.zeros_like(gold)
            i, u = _iou_parts(pred, gold)
            inter, union = inter + i, union + u
            ious.append(i / u if u else 1.0)
            label = (sample.meta.get("labels") or ["?"])[0]
            cls_i[label] += i
            cls_u[label] += u
    out = {"ciou": inter / union if union else 1.0, "giou": float(np.mean(ious)) if ious else 0.0, "n": len(items)}
    if per_class:
        out["miou"] = float(np.mean([cls_i[c] / cls_u[c] for c in cls_u if cls_u[c]])) if cls_u else 0.0
    return out


# ---- box tasks --------------------------------------------------------------------------------
def _predicted_boxes(model, dataset, *, n: int, batch_size: int):
    """(samples, the boxes each answer's first <det> gave: [] when it gave none)."""
    task = _box_task(model)
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    predicted = []
    for chunk in _batches(items, batch_size):
        gen = _answer(model, [Sample(turns=s.turns[:-1], images=s.images) for s in chunk], max_new_tokens=32)
        outs = gen.decoder_outputs.get(task, [[] for _ in chunk])
        predicted.extend(list(per_sample[0]) if per_sample else [] for per_sample in outs)
    return items, predicted


def _gold_boxes(sample: Sample) -> list:
    return list(next(iter(sample.targets.values()))[0])


def eval_detection(model, dataset, *, n: int, batch_size: int) -> dict[str, float]:
    from omniplug.eval.detection import coco_map

    items, predicted = _predicted_boxes(model, dataset, n=n, batch_size=batch_size)
    gold = [_gold_boxes(s) for s in items]
    out = dict(coco_map(predicted, gold, [(s.images[0].height, s.images[0].width) for s in items]))
    out["n"] = len(items)
    return out


def eval_referring_boxes(model, dataset, *, n: int, batch_size: int) -> dict[str, float]:
    from omniplug.eval.detection import referring_accuracy

    items, predicted = _predicted_boxes(model, dataset, n=n, batch_size=batch_size)
    out = dict(referring_accuracy(predicted, [_gold_boxes(s)[0] for s in items]))
    out["n"] = len(items)
    return out


def box_protocol(dataset) -> str | None:
    """"detection" (COCO mAP / AP50), "referring" (box accuracy at IoU 0.5) or None for a dataset, looking
    through the world's task wrapper to its reader."""
    return getattr(getattr(dataset, "reader", dataset), "box_protocol", None)


def evaluate_boxes(model, dataset, *, n: int, batch_size: int) -> dict[str, float]:
    """The box figures of one detection dataset (``coco_detection``, ``refcoco`` with ``target: box``, or a
    world box task) from the model's own answers."""
    protocol = box_protocol(dataset)
    if protocol == "detection":
        return eval_detection(model, dataset, n=n, batch_size=batch_size)
    if protocol == "referring":
        return eval_referring_boxes(model, dataset, n=n, batch_size=batch_size)
    raise ValueError(f"{type(dataset).__name__} holds no boxes to score (coco_detection, or refcoco with target: box)")


def _labels_before_triggers(text: str, token: str, vocabulary: Sequence[str]) -> list[str | None]:
    labels = []
    for piece in text.split(token)[:-1]:
        words = re.findall(r"[a-z]+", piece.lower())
        labels.append(next((w for w in reversed(words) if w in vocabulary), None))
    return labels


def panoptic_quality(pairs: Iterable[tuple[list[tuple[str, np.ndarray]], list[tuple[str, np.ndarray]]]]) -> dict[str, float]:
    """COCO PQ from (predicted segments, gold segments) per image; each segment is (label, mask).
    Predictions are made non-overlapping by painting them in order (later ones on top)."""
    iou_sum: dict[str, float] = defaultdict(float)
    tp: dict[str, int] = defaultdict(int)
    fp: dict[str, int] = defaultdict(int)
    fn: dict[str, int] = defaultdict(int)
    for preds, golds in pairs:
        if preds:
            canvas = np.full(preds[0][1].shape, -1)
            for k, (_, m) in enumerate(preds):
                canvas[np.asarray(m, dtype=bool)] = k
            preds = [(label, canvas == k) for k, (label, _) in enumerate(preds)]
        matched_p: set[int] = set()
        for g_label, g_mask in golds:
            best, best_k = 0.0, None
            for k, (p_label, p_mask) in enumerate(preds):
                if k in matched_p or p_label != g_label:
                    continue
                i, u = _iou_parts(p_mask, g_mask)
                iou = i / u if u else 0.0
                if iou > best:
                    best, best_k = iou, k
            if best > 0.5:
                matched_p.add(best_k)
                tp[g_label] += 1
                iou_sum[g_label] += best
            else:
                fn[g_label] += 1
        for k, (p_label, p_mask) in enumerate(preds):
            if k not in matched_p and p_mask.any():
                fp[p_label or "?"] += 1
    cats = set(tp) | set(fn)
    pq = [iou_sum[c] / (tp[c] + 0.5 * fp[c] + 0.5 * fn[c]) if tp[c] + fp[c] + fn[c] else 0.0 for c in cats]
    return {"pq": float(np.mean(pq)) if pq else 0.0, "tp": sum(tp.values()), "fp": sum(fp.values()), "fn": sum(fn.values())}


def eval_panoptic(model, dataset, *, n: int, batch_size: int, vocabulary: Sequence[str]) -> dict[str, float]:
    task = _seg_task(model)
    token = model.decoders[task].tokens[0]
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    pairs = []
    for chunk in _batches(items, batch_size):
        gen, preds = _predicted_masks(model, chunk, task)
        for sample, text, masks in zip(chunk, gen.texts, preds):
            labels = _labels_before_triggers(text, token, vocabulary)
            pred = [(lab, np.asarray(m.mask, dtype=bool)) for lab, m in zip(labels, masks)]
            gold = list(zip(sample.meta["labels"], [np.asarray(t, dtype=bool) for t in sample.targets[task]]))
            pairs.append((pred, gold))
    return {**panoptic_quality(pairs), "n": len(items)}


# ---- generation ---------------------------------------------------------------------------------
def eval_generation(model, data_dir: Path, *, n: int, batch_size: int,
                    prompt: Callable[[dict[str, Any]], str] | None = None) -> dict[str, float]:
    """Analyser scores of pictures drawn for the split's generation captions. ``prompt`` turns a
    ``generation.jsonl`` record into the request (default "Draw {caption}."); ``answered`` is the share
    of requests answered with a picture (a request answered without one scores 0)."""
    from omniplug.data.generation import draw_prompt
    from omniplug.data.world import analyse, colour_score, expected_from_caption, score_objects

    task = _gen_task(model)
    if task is None:
        return {}
    prompt = prompt or (lambda rec: draw_prompt(rec["caption"]))
    records = [json.loads(line) for line in (data_dir / "generation.jsonl").read_text().splitlines() if line.strip()][:n]
    exact, answered, f1s, colour_f1s = 0, 0, [], []
    for chunk in _batches(records, batch_size):
        samples = [Sample(turns=[Turn("user", prompt(r))]) for r in chunk]
        gen = _answer(model, samples, max_new_tokens=16)
        for rec, images in zip(chunk, gen.decoder_outputs.get(task, [[] for _ in chunk])):
            expected = expected_from_caption(rec["caption"])
            if not images:
                f1s.append(0.0)
                colour_f1s.append(0.0)
                continue
            score = score_objects(detected=analyse(images[0]), expected=expected)
            answered += 1
            exact += int(score.exact)
            f1s.append(score.f1)
            colour_f1s.append(colour_score(images[0], expected).f1)
    share = (lambda k: k / len(records) if records else 0.0)  # noqa: E731
    return {"exact": share(exact), "object_f1": float(np.mean(f1s)) if f1s else 0.0,
            "colour_f1": float(np.mean(colour_f1s)) if colour_f1s else 0.0, "answered": share(answered),
            "n": len(records)}


# ---- everything ---------------------------------------------------------------------------------
MASK_TASKS = ("referring", "reasoning", "semantic", "part", "panoptic")
BOX_TASKS = ("detection", "referring_box")


def supported_tasks(model) -> tuple[str, ...]:
    """The world tasks ``model`` can answer: captions and VQA always, mask tasks with a mask decoder,
    box tasks with a box decoder, generation with an image decoder (a specialist is scored on its own tasks)."""
    kinds = {getattr(d, "output_kind", "") for d in model.decoders.values()}
    return tuple(t for t in TASKS if (t not in MASK_TASKS or "masks" in kinds) and (t not in BOX_TASKS or "boxes" in kinds)
                 and (t != "generation" or "images" in kinds))


def evaluate_world(model, data_dir: str | Path, *, n: int = 100, batch_size: int = 16,
                   tasks: Sequence[str] | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The task figures on one world split written by ``omniplug world generate`` (``tasks``: default
    every task the model supports), plus the image-reliance check when the model has an encoder."""
    from omniplug.data.world_tasks import _reader
    from omniplug.data.world import CATEGORIES

    data_dir = Path(data_dir)
    every = tasks is None
    tasks = supported_tasks(model) if tasks is None else tuple(tasks)
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown world eval task(s) {sorted(unknown)}; choose from {', '.join(TASKS)}")
    vocabulary = [c.name for c in CATEGORIES]
    was_training = model.training
    model.eval()
    results: dict[str, Any] = {}
    try:
        for task in tasks:
            start = time.perf_counter()
            if task == "caption":
                res = eval_caption(model, data_dir, n=n, batch_size=batch_size)
            elif task == "vqa":
                res = eval_vqa(model, data_dir, n=n, batch_size=batch_size)
            elif task == "generation":
                res = eval_generation(model, data_dir, n=n, batch_size=batch_size)
            elif task == "detection":
                res = eval_detection(model, _reader("detection", data_dir, {}), n=n, batch_size=batch_size)
            elif task == "referring_box":
                res = eval_referring_boxes(model, _reader("referring_box", data_dir, {}), n=n, batch_size=batch_size)
            elif task == "panoptic":
                res = eval_panoptic(model, _reader("panoptic", data_dir, {}), n=n, batch_size=batch_size,
                                    vocabulary=vocabulary)
            else:
                reader = {"referring": "referring", "reasoning": "reasoning", "semantic": "semantic", "part": "part"}[task]
                res = eval_masks(model, _reader(reader, data_dir, {}), n=n, batch_size=batch_size,
                                 per_class=task in ("semantic", "part"))
            if res:
                res["seconds"] = round(time.perf_counter() - start, 1)
                results[task] = res
            if progress:
                progress(f"{task}: {res}")
        if every:
            reliance = image_reliance(model, data_dir, n=n, batch_size=batch_size)
            if reliance:
                results["image_reliance"] = reliance
    finally:
        model.train(was_training)
    return results


HEADLINE = {"caption": "object_f1", "vqa": "accuracy", "referring": "ciou", "reasoning": "giou", "semantic": "miou",
            "part": "miou", "panoptic": "pq", "detection": "ap50", "referring_box": "accuracy", "generation": "exact"}


def format_world_table(results: dict[str, Any]) -> str:
    """One row per task: the headline figure, then the same for the hold-out split when present."""
    rows = [("task", "metric", "seen", "holdout")]
    holdout = results.get("holdout", {})
    for task in TASKS:
        if task not in results:
            continue
        metric = HEADLINE[task]
        seen = results[task].get(metric)
        held = holdout.get(task, {}).get(metric)
        rows.append((task, metric, f"{seen:.3f}" if seen is not None else "-", f"{held:.3f}" if held is not None else "-"))
    if "image_reliance" in results:  # a diagnostic, not a task: LM loss gained by seeing the right image
        held = holdout.get("image_reliance", {}).get("gap")
        rows.append(("(image reliance)", "loss gap", f"{results['image_reliance']['gap']:.3f}",
                     f"{held:.3f}" if held is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows)

"""Mask requests in the forms people type. Stuff regions (sky, grass, water) asked in the semantic template the
data has always used ("What is sky in this image? Please output segmentation mask.") and in the referring forms
("Please segment the sky.", "Segment the sky.") and a form no recipe trains ("Could you segment the sky?");
objects asked by their refCOCO expression in the same four forms. Mean IoU per form and class (stuff) or per
form (objects) over the first ``--n`` images of a world split, against its semantic maps and instance masks.

    python bench/default/seg_forms.py [--config configs/default/omni_tiny.yaml] [--data data/world/eval/val]
        [--n 20] [--out FILE] [overrides ...]

(The eleventh session's ``stuff_prompts_v*.json`` hold the stuff part alone, in the first two forms.)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from omniplug.build import build_model  # noqa: E402
from omniplug.config import load_config  # noqa: E402
from omniplug.data.seg_common import decode_coco_segmentation, fill  # noqa: E402
from omniplug.infer.pipeline import Pipeline, Request  # noqa: E402

FORMS = {"semantic": "What is {sent} in this image? Please output segmentation mask.",
         "referring": "Please segment the {sent}.", "imperative": "Segment the {sent}.",
         "untrained": "Could you segment the {sent}?"}  # a form no recipe trains: how far phrasing generalises
STUFF = ("sky", "grass", "water")


def _iou(response, truth: np.ndarray) -> float:
    mask = np.asarray(response.masks[0].mask, bool) if response.masks else np.zeros_like(truth)
    return float((mask & truth).sum() / max((mask | truth).sum(), 1))


def _mean(ious: list[float]) -> dict:
    return {"mean": round(float(np.mean(ious)), 3) if ious else None, "n": len(ious)}  # None: nothing to ask


def _objects(data: Path, n: int) -> list[tuple[str, str, np.ndarray]]:
    """(image file, shortest expression, mask) for each of the first n images' first ref."""
    inst = json.loads((data / "instances.json").read_text())
    anns = {a["id"]: a for a in inst["annotations"]}
    images = {im["id"]: im for im in inst["images"]}
    chosen: dict[int, tuple[str, str, np.ndarray]] = {}
    for ref in json.loads((data / "refs.json").read_text()):
        info = images[ref["image_id"]]
        if ref["image_id"] in chosen or int(Path(info["file_name"]).stem) >= n or not ref.get("sentences"):
            continue
        sent = min((s["sent"] for s in ref["sentences"]), key=len)
        mask = decode_coco_segmentation(anns[ref["ann_id"]]["segmentation"], int(info["height"]), int(info["width"]))
        chosen[ref["image_id"]] = (info["file_name"], sent, mask)
    return [chosen[k] for k in sorted(chosen)]


def measure(config: str, overrides: list[str], *, data: Path, n: int) -> dict:
    pipe = Pipeline(build_model(load_config(config, overrides)))
    classes = json.loads((data / "semantic_classes.json").read_text())
    report: dict = {"config": config, "overrides": overrides, "data": str(data), "n": n, "iou": {}, "objects": {}}
    objects = _objects(data, n)
    for form, template in FORMS.items():
        for name in STUFF:
            requests, truths = [], []
            for i in range(n):
                truth = np.asarray(Image.open(data / "semantic" / f"{i:06d}.png")) == classes.index(name)
                if truth.any():
                    requests.append(Request(fill(template, sent=name), [data / "images" / f"{i:06d}.png"]))
                    truths.append(truth)
            ious = [_iou(r, t) for r, t in zip(pipe.batch(requests) if requests else [], truths)]
            report["iou"][f"{form}/{name}"] = _mean(ious)
            print(form, name, report["iou"][f"{form}/{name}"], flush=True)
        requests = [Request(fill(template, sent=sent), [data / "images" / file]) for file, sent, _ in objects]
        ious = [_iou(r, m) for r, (_, _, m) in zip(pipe.batch(requests) if requests else [], objects)]
        report["objects"][form] = _mean(ious)
        print(form, "objects", report["objects"][form], flush=True)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/default/omni_tiny.yaml")
    ap.add_argument("--data", default="data/world/eval/val")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--out", default=None)
    args, overrides = ap.parse_known_args()
    report = measure(args.config, overrides, data=Path(args.data), n=args.n)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()

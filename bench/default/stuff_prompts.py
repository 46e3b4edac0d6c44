"""Stuff regions asked in two forms: the semantic template the model trains on ("What is sky in this image?
Please output segmentation mask.") and the referring form people also type ("Please segment the sky.").
Mean IoU per form and class over the first ``--n`` images of a world split, against its semantic maps.

    python bench/default/stuff_prompts.py [--config configs/default/omni_tiny.yaml] [--data data/world/eval/val]
        [--n 20] [--out FILE] [overrides ...]
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
from omniplug.infer.pipeline import Pipeline, Request  # noqa: E402

FORMS = {"semantic": "What is {} in this image? Please output segmentation mask.", "referring": "Please segment the {}."}


def measure(config: str, overrides: list[str], *, data: Path, n: int) -> dict:
    pipe = Pipeline(build_model(load_config(config, overrides)))
    classes = json.loads((data / "semantic_classes.json").read_text())
    report: dict = {"config": config, "overrides": overrides, "data": str(data), "n": n, "iou": {}}
    for form, template in FORMS.items():
        for name in ("sky", "grass", "water"):
            ious = []
            requests, truths = [], []
            for i in range(n):
                truth = np.asarray(Image.open(data / "semantic" / f"{i:06d}.png")) == classes.index(name)
                if truth.any():
                    requests.append(Request(template.format(name), [data / "images" / f"{i:06d}.png"]))
                    truths.append(truth)
            for response, truth in zip(pipe.batch(requests) if requests else [], truths):
                mask = np.asarray(response.masks[0].mask, bool) if response.masks else np.zeros_like(truth)
                ious.append(float((mask & truth).sum() / (mask | truth).sum()))
            mean = round(float(np.mean(ious)), 3) if ious else None  # None: no image of the split shows it
            report["iou"][f"{form}/{name}"] = {"mean": mean, "n": len(ious)}
            print(form, name, report["iou"][f"{form}/{name}"], flush=True)
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

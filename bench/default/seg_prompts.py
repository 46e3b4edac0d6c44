"""Do the ``<seg>`` prompts say which object is meant? Teacher-forced on world val images, three referring
questions per image in one multi-turn conversation (each the single-object form), so the three masks of
one image differ only by their prompts:

- ``iou_own``: mean IoU of each predicted mask with its own target;
- ``iou_between``: mean IoU between the three masks of one image — near 1 means one blob for every question;
- ``area_ratio``: predicted / target pixels (far below 1: an under-confident decoder);
- ``prompt_norm`` and ``prompt_cos_same_image`` / ``prompt_cos_all``: the projected prompts' size and their
  mean pairwise cosine similarity; near 1 means the ``<seg>`` states collapsed to one vector.

    python bench/default/seg_prompts.py -c bench/default/v7.yaml one_model.weights=output/omni_tiny_v7 [--n 16]

Prints one JSON object (also written to ``--out`` when given).
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from omniplug.build import build_model  # noqa: E402
from omniplug.config import load_config  # noqa: E402
from omniplug.data.collate import Collator  # noqa: E402
from omniplug.data.world_tasks import WorldTaskDataset  # noqa: E402


def _iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = float((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


@torch.no_grad()
def measure(config_path: str, overrides: list[str], *, n: int, root: str) -> dict:
    config = load_config(config_path, overrides)
    torch.manual_seed(0)
    model = build_model(config).eval()
    data = WorldTaskDataset(root=root, task="referring", split="val", n=500, seed=1,
                            options={"refs_per_sample": 3, "multi_turn": True})
    samples = [s for s in (data[i] for i in range(len(data))) if len(s.targets["seg"]) == 3][:n]
    grabbed: dict[str, torch.Tensor] = {}
    hook = model.out_projectors["seg"].register_forward_hook(lambda m, i, o: grabbed.__setitem__("p", o.detach()))
    try:
        out = model(Collator(model, max_length=config.data.max_length)(samples))
    finally:
        hook.remove()
    prompts = grabbed["p"][:, 0]
    masks = [logits > 0 for logits in out.decoder_outputs["seg"].mask_logits]
    gold = [torch.as_tensor(t) > 0.5 for s in samples for t in s.targets["seg"]]
    pairs = [(3 * k + i, 3 * k + j) for k in range(len(samples)) for i in range(3) for j in range(i + 1, 3)]
    cos = F.cosine_similarity(prompts[:, None], prompts[None], dim=-1)
    off = ~torch.eye(len(prompts), dtype=torch.bool)
    norms = prompts.norm(dim=-1)
    return {
        "config": config_path, "overrides": overrides, "images": len(samples),
        "iou_own": round(float(np.mean([_iou(a, g) for a, g in zip(masks, gold)])), 4),
        "iou_between": round(float(np.mean([_iou(masks[a], masks[b]) for a, b in pairs])), 4),
        "area_ratio": round(sum(float(m.sum()) for m in masks) / sum(float(g.sum()) for g in gold), 4),
        "prompt_norm": round(float(norms.mean()), 3), "prompt_norm_std": round(float(norms.std()), 3),
        "prompt_cos_same_image": round(float(np.mean([cos[a, b].item() for a, b in pairs])), 4),
        "prompt_cos_all": round(float(cos[off].mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--config", default="configs/default/omni_tiny.yaml")
    parser.add_argument("--n", type=int, default=16, help="images (three questions each)")
    parser.add_argument("--data", default="data/world/val", help="a world split (omniplug world generate)")
    parser.add_argument("--out", default=None)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    result = measure(args.config, args.overrides, n=args.n, root=args.data)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()

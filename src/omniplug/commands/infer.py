"""``omniplug infer -c CONFIG --image PATH --prompt TEXT [--out DIR] [--json]``: one answer, masks saved."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omniplug.cli import command


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file (one_model.weights picks trained weights)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. one_model.weights=output/run1/final")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image file (repeat for several; decoders use the first)")
    p.add_argument("--prompt", required=True, help="the question, e.g. 'Please segment the red circle.'")
    p.add_argument("--out", metavar="DIR", help="write mask_<i>.png and overlay.png here")
    p.add_argument("--json", action="store_true", help="print {text, masks: [{path, label, area}], timings} as JSON")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--answer-prefix", default=None, metavar="TEXT",
                   help="start the answer with this template text (task tokens allowed), e.g. '<gen_0><gen_1><gen_2><gen_3>' "
                        "to make an untrained model draw")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1 (default: where the model was built, CPU)")


@command("infer", "answer one prompt about an image; save masks and an overlay")(_args)
def _run(args: argparse.Namespace) -> int:
    from omniplug.data.images import open_image
    from omniplug.infer.pipeline import Pipeline
    from omniplug.infer.render import save_masks

    images = [open_image(p) for p in args.image]  # fail on a bad image before building the model
    pipe = Pipeline.from_config(args.config, args.overrides, device=args.device)
    response = pipe(images, args.prompt, max_new_tokens=args.max_new_tokens, answer_prefix=args.answer_prefix)
    saved, overlay_path, image_paths = [], None, []
    if args.out:
        saved, overlay_path = save_masks(response.masks, images[0] if images else None, args.out)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(response.images, start=1):
            image_paths.append(str(out_dir / f"image_{i}.png"))
            image.save(image_paths[-1])
    masks = [{"path": s.path, "label": s.label, "area": s.area} for s in saved] if args.out else \
        [{"path": None, "label": m.label, "area": int(m.mask.sum())} for m in response.masks]
    if args.json:
        print(json.dumps({"text": response.text, "masks": masks,
                          "overlay": str(overlay_path) if overlay_path else None, "images": image_paths,
                          "timings": {k: round(v, 4) for k, v in response.timings.items()}}, indent=2))
        return 0
    print(response.text)
    for i, m in enumerate(masks, start=1):
        where = f" -> {m['path']}" if m["path"] else ""
        print(f"  mask {i}: {m['area']} px" + (f", {m['label']}" if m["label"] else "") + where)
    if overlay_path:
        print(f"  overlay -> {overlay_path}")
    for path in image_paths:
        print(f"  image -> {path}")
    print("  timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in response.timings.items()))
    return 0

"""The bundled default model segmenting a moving object in every frame of world clips: J / F / J&F on val and
hold-out clip splits, and a picture (one row per clip: each frame with the predicted mask drawn on it).

    python bench/video/masks_over_time.py        # ~3 min on 2 CPU threads; writes segmentation.json + masks_over_time.png

The clip splits are written on first use (`omniplug world clips`, seed 101: not a training seed). The model was
trained on still images only (`configs/default/omni_tiny.yaml`); each frame is asked "Please segment <the mover>."
as its own request (answered together through continuous batching), see `omniplug.eval.video.segment_over_time`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tint(frame, mask):
    """The frame with the mask in translucent cyan and its outline in white: visible on every world colour."""
    import numpy as np
    from PIL import Image
    from scipy import ndimage

    pixels = np.asarray(frame, dtype=np.float32).copy()
    mask = np.asarray(mask, dtype=bool)
    pixels[mask] = 0.45 * pixels[mask] + 0.55 * np.array([0, 255, 255], dtype=np.float32)
    pixels[mask & ~ndimage.binary_erosion(mask)] = 255
    return Image.fromarray(pixels.astype(np.uint8))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "default" / "omni_tiny.yaml"))
    p.add_argument("--n", type=int, default=100, help="clips per split")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    from omniplug.data.world.clips import mover_phrase, read_clips, write_clips
    from omniplug.eval.bench_record import record_header
    from omniplug.eval.video import segment_over_time
    from omniplug.infer.pipeline import Pipeline

    pipe = Pipeline.from_config(args.config, prefix_cache_mb=0)
    result = {**record_header(repo=REPO, config=args.config, argv=argv), "splits": {}}
    for split in ("val", "holdout"):
        root = REPO / "data" / "world" / f"clips_{split}"
        if not (root / "meta.json").is_file() or json.loads((root / "meta.json").read_text())["n"] != args.n:
            write_clips(out_dir=root, n=args.n, seed=101, split=split, overwrite=True)
        result["splits"][split] = segment_over_time(pipe, root, n=args.n)
        print(split, result["splits"][split], flush=True)
    out = Path(__file__).with_name("segmentation.json")
    out.write_text(json.dumps(result, indent=2) + "\n")

    rows = []  # the picture: the first 6 hold-out clips
    root = REPO / "data" / "world" / "clips_holdout"
    videos = json.loads((root / "clips.json").read_text())["videos"]
    for clip, video in list(zip(read_clips(root), videos))[:6]:
        phrase = mover_phrase(clip)
        frames = [Image.open(root / name).convert("RGB") for name in video["file_names"]]
        answers = pipe.batch([{"prompt": f"Please segment {phrase}.", "images": [str(root / name)]}
                              for name in video["file_names"]])
        rows.append([_tint(f, a.masks[0].mask) if a.masks else f for f, a in zip(frames, answers)])
    side = 128
    sheet = Image.new("RGB", (8 * (side + 2), len(rows) * (side + 2)), "white")
    for r, row in enumerate(rows):
        for c, frame in enumerate(row):
            sheet.paste(frame.resize((side, side), Image.Resampling.NEAREST), (c * (side + 2), r * (side + 2)))
    sheet.save(Path(__file__).with_name("masks_over_time.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

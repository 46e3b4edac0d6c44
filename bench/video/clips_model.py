"""The clip model (configs/video/omni_clips.yaml: the bundled model taught clips) on the clip val and hold-out
splits: clips it makes (per-frame object F1, motion accuracy, consistency, against a direction-blind generator),
clips it reads (direction questions against the commonest answer, captions) and segments over time (J&F: one
request per frame, and every frame in one request answered with a mask per frame), and a GIF grid of the clips it
makes for val and hold-out prompts.

    python bench/video/clips_model.py --weights output/omni_clips   # ~11 min on 2 CPU threads -> clips_model.json, grid

The clip splits are the ones masks_over_time.py uses (`omniplug world clips`, seed 101, not a training seed),
written on first use. The hold-out clips move a colour-shape its held-out way, never seen in training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SIDE = 96  # pixels of one frame in the grid


def clip_split(split: str, n: int) -> Path:
    from omniplug.data.world.clips import write_clips

    root = REPO / "data" / "world" / f"clips_{split}"
    meta = root / "meta.json"
    if not meta.is_file() or json.loads(meta.read_text())["n"] < n:
        write_clips(out_dir=root, n=max(n, 100), seed=101, split=split, overwrite=True)
    return root


def grid(rows: list[tuple[str, list]], out_gif: Path, out_png: Path) -> None:
    """One row per clip (a prompt's true clip, then the one the model made): its label, then the clip playing
    (GIF) / its frames side by side (PNG)."""
    from PIL import Image, ImageDraw

    label_w, pad = 330, 2
    frames = len(rows[0][1])
    height = len(rows) * (SIDE + pad)

    def labelled(draw: ImageDraw.ImageDraw) -> None:
        for r, (prompt, _) in enumerate(rows):
            draw.text((6, r * (SIDE + pad) + SIDE // 2 - 6), prompt, fill="black")

    gif = []
    for t in range(frames):
        canvas = Image.new("RGB", (label_w + SIDE, height), "white")
        labelled(ImageDraw.Draw(canvas))
        for r, (_, clip) in enumerate(rows):
            canvas.paste(clip[t].resize((SIDE, SIDE), Image.Resampling.NEAREST), (label_w, r * (SIDE + pad)))
        gif.append(canvas)
    gif[0].save(out_gif, save_all=True, append_images=gif[1:], duration=250, loop=0)
    sheet = Image.new("RGB", (label_w + frames * (SIDE + pad), height), "white")
    labelled(ImageDraw.Draw(sheet))
    for r, (_, clip) in enumerate(rows):
        for t, frame in enumerate(clip):
            sheet.paste(frame.resize((SIDE, SIDE), Image.Resampling.NEAREST), (label_w + t * (SIDE + pad), r * (SIDE + pad)))
    sheet.save(out_png)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "video" / "omni_clips.yaml"))
    p.add_argument("--weights", required=True, help="a trained run of the config (its folder)")
    p.add_argument("--n", type=int, default=100, help="clips per split for reading and segmenting")
    p.add_argument("--n-gen", type=int, default=100, help="clips per split to generate")
    p.add_argument("--rows", type=int, default=5, help="prompts per split in the grid")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    torch.set_num_threads(args.threads)
    from omniplug.data.clip_generation import read_videos
    from omniplug.eval.bench_record import record_header
    from omniplug.eval.video import answer_clip_questions, evaluate_clips, segment_over_time
    from omniplug.infer.pipeline import Pipeline

    overrides = [f"one_model.weights={args.weights}"] if args.weights else []
    pipe = Pipeline.from_config(args.config, overrides, prefix_cache_mb=0)
    model = pipe.model.eval()
    result = {**record_header(repo=REPO, config=args.config, argv=argv), "weights": args.weights,
              "splits": {}}
    rows = []
    for split in ("val", "holdout"):
        root = clip_split(split, max(args.n, args.n_gen))
        report = {"generation": evaluate_clips(model, root, n=args.n_gen, batch_size=8),
                  "questions": answer_clip_questions(model, root, n=args.n, batch_size=8),
                  "segmentation": segment_over_time(pipe, root, n=args.n),
                  "segmentation_one_answer": segment_over_time(pipe, root, n=args.n, one_answer=True, frames=4)}
        result["splits"][split] = report
        print(split, json.dumps(report), flush=True)
        for video in read_videos(root)[: args.rows]:
            response = pipe([], video["prompt"])
            if response.videos:
                true = [Image.open(root / name).convert("RGB") for name in video["file_names"]]
                rows.append((f"{split}: {video['prompt']}", true))
                rows.append(("  made by the model", response.videos[0]))
    here = Path(__file__).parent
    (here / "clips_model.json").write_text(json.dumps(result, indent=2) + "\n")
    if rows:
        grid(rows, here / "generated_clips.gif", here / "generated_clips.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train a tiny text -> image model end to end on CPU and draw a grid of its samples.

    python bench/gen_samples.py            # ~7 min on one CPU thread; writes docs/gen_samples.png

Tiny CLIP + tiny Llama (LoRA) + ``gen_transformer`` + a pixel-space UNet (``vae: none``, 32 px,
trained from scratch) on one-shape images ("a red circle"); the random tiny VAE of ``omniplug tiny``
cannot reconstruct images, so a grid worth looking at needs pixel space. Everything goes through
``one_model``: prompt -> LLM -> 4 <gen_i> hiddens -> projector -> UNet; sampling through
``OneModel.generate`` with the trigger tokens forced. Writes the grid PNG and ``<out>.json`` with
the loss curve and a colour accuracy (the dominant non-background colour of each sample against
the colour its prompt asked for).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

CONFIG = """\
includes: [catalogue.yaml]
projector:
  gen_proj: {{type: gen_transformer, num_queries: 8, width: 64, depth: 1, heads: 4}}
decoder:
  pixel_sd: {{type: diffusion, model_name_or_path: "{sd}", vae: none, num_tokens: 4, seq_len: 8,
             num_inference_steps: 25, guidance_scale: {guidance}, train_unet: true, cond_dropout: 0.1,
             text_encoder: text_encoder}}
dataset:
  shapes: {{type: generation_pairs, data_dir: "{data}", num_tokens: 4}}
one_model:
  encoder: tiny_clip
  in_projector: image_proj
  tokenizer: tiny_tok
  llm: tiny_llama
  out_projector: gen_proj
  decoder: pixel_sd
  conv_type: plain
  train_mode: 1
"""


def dominant_colour(image: Image.Image, colours: dict[str, tuple[int, int, int]], background: tuple[int, int, int]) -> str:
    """The named colour nearest to most pixels that are not nearest to the background."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32).reshape(-1, 3)
    names = ["background", *colours]
    rgb = np.array([background, *colours.values()], dtype=np.float32)
    nearest = np.argmin(((arr[:, None] - rgb[None]) ** 2).sum(-1), axis=1)
    counts = np.bincount(nearest, minlength=len(names))[1:]
    return names[1 + int(counts.argmax())] if counts.sum() else "background"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=1, help="1 is fastest on a shared CPU (no OpenMP spinning)")
    p.add_argument("--out", default="docs/gen_samples.png")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from omniplug.build import build_dataset, build_model
    from omniplug.config import load_config
    from omniplug.data.collate import Collator
    from omniplug.data.conversation import Turn
    from omniplug.data.sample import Sample
    from omniplug.fixtures.tiny_diffusion import BACKGROUND, COLOURS, SHAPES, write_gen_data, write_sd
    from omniplug.fixtures.tiny import write_all

    work = Path(tempfile.mkdtemp(prefix="omniplug_gen_bench_"))
    write_all(work)
    write_sd(work / "sd_pixel", pixel_space=True)  # its tiny text encoder gives the alignment loss's targets
    write_gen_data(work / "shapes", n_train=1024, n_val=0)
    (work / "bench.yaml").write_text(CONFIG.format(sd=work / "sd_pixel", data=work / "shapes", guidance=args.guidance))
    config = load_config(work / "bench.yaml")
    torch.manual_seed(0)
    model = build_model(config)
    data = build_dataset(config, "shapes")
    collate = Collator(model, max_length=128)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, foreach=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    rng = np.random.default_rng(0)
    curve, window, start = [], [], time.time()
    model.train()
    for step in range(1, args.steps + 1):
        batch = collate([data[int(i)] for i in rng.integers(0, len(data), args.batch)])
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        window.append(out.decoder_losses["gen/diffusion"].item())
        if step % 50 == 0:
            curve.append({"step": step, "diffusion_loss": float(np.mean(window)), "seconds": round(time.time() - start, 1)})
            window = []
            print(curve[-1], flush=True)

    model.eval()
    prompts = [(c, s) for s in SHAPES for c in COLOURS]
    samples = [Sample(turns=[Turn("user", f"Draw a {c} {s}.")]) for c, s in prompts]
    gen = model.generate(Collator(model, for_generation=True)(samples), max_new_tokens=1,
                         answer_prefix="".join(model.decoders["gen"].tokens))
    images = [items[0] for items in gen.decoder_outputs["gen"]]
    hits = [dominant_colour(im, COLOURS, BACKGROUND) == c for im, (c, _) in zip(images, prompts)]

    cell, label = 96, 14
    cols, rows = len(COLOURS), len(SHAPES)
    grid = Image.new("RGB", (cols * cell, rows * (cell + label)), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for k, (im, (c, s)) in enumerate(zip(images, prompts)):
        x, y = (k % cols) * cell, (k // cols) * (cell + label)
        grid.paste(im.resize((cell, cell), Image.Resampling.NEAREST), (x, y + label))
        draw.text((x + 3, y + 1), f"{c} {s}", fill=(0, 0, 0))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    grid.save(out)
    report = {"steps": args.steps, "batch": args.batch, "lr": args.lr, "guidance_scale": args.guidance,
              "colour_accuracy": sum(hits) / len(hits), "prompts": [f"{c} {s}" for c, s in prompts],
              "colour_hits": hits, "loss_curve": curve, "train_seconds": round(time.time() - start, 1)}
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out} (colour accuracy {report['colour_accuracy']:.2f})")


if __name__ == "__main__":
    main()

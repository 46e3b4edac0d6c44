"""How many UNet steps does the default model's diffusion decoder need to draw what it is told?

Isolates the UNet from the LLM: the ``diffusion`` decoder plugin (``configs/default/base/sd``, from
scratch, x0 prediction as shipped) is trained alone on world generation pairs under a *perfect*
conditioning: one token per object (learned category + colour + size vectors) and one for the
background (water or not), padded to ``seq_len`` with a learned pad vector — what an ideal ``<gen>``
projection would carry. Every ``--eval-every`` steps it samples ``--val`` val prompts and scores them
with the world's image analyser (object F1, exact), the eval's own generation figures.

``--fg-weight W`` multiplies the x0 error on object pixels by ``1 + W`` (the scene's visible objects,
rendered from the record): the picture's error is mostly sky and grass, which no prompt predicts.

    python bench/default/gen_unet_probe.py --steps 1500 --json bench/default/gen_unet_probe_plain.json
    python bench/default/gen_unet_probe.py --steps 1500 --fg-weight 4 --json bench/default/gen_unet_probe_fg4.json
    # the 4x4-patch UNet (decoder patch_size: 4), two threads; --pred picks what the UNet predicts
    python bench/default/gen_unet_probe.py --base configs/default/base/sd_patch --patch 4 --fg-weight 4 --threads 2 \
        --steps 3000 --pred sample --json bench/default/gen_unet_probe_patch4.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from omniplug.data.world import analyse, colour_score, expected_from_caption, render_scene, score_objects
from omniplug.data.world.scene import Scene
from omniplug.data.world.vocab import COLOURS as WORLD_COLOURS, COMPOSITES, SHAPES, SIZES as WORLD_SIZES
from omniplug.decoders.diffusion import DiffusionDecoder, to_pil

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = list(SHAPES + COMPOSITES)
COLOURS = [None, *WORLD_COLOURS]
SIZES = [None, *WORLD_SIZES]


class PerfectConditioning(nn.Module):
    """Caption -> (S, D): one token per described object (category + colour + size), one for the scene."""

    def __init__(self, dim: int, seq_len: int) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.category = nn.Embedding(len(CATEGORIES), dim)
        self.colour = nn.Embedding(len(COLOURS), dim)
        self.size = nn.Embedding(len(SIZES), dim)
        self.scene = nn.Embedding(2, dim)  # water or not
        self.pad = nn.Parameter(torch.zeros(dim))
        for e in (self.category, self.colour, self.size, self.scene):
            nn.init.normal_(e.weight, std=1.0)

    def forward(self, captions: list[str]) -> torch.Tensor:
        rows = []
        for caption in captions:
            objs = expected_from_caption(caption)
            toks = [self.scene.weight[int("water" in caption)]]
            for o in objs[: self.seq_len - 1]:
                toks.append(self.category.weight[CATEGORIES.index(o.category)]
                            + self.colour.weight[COLOURS.index(o.colour if o.colour in COLOURS else None)]
                            + self.size.weight[SIZES.index(o.size if o.size in SIZES else None)])
            toks += [self.pad] * (self.seq_len - len(toks))
            rows.append(torch.stack(toks))
        return torch.stack(rows)


def records(world: Path, split: str) -> list[dict]:
    path = world / split / "generation.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def foreground(rec: dict) -> np.ndarray:
    return render_scene(Scene.from_json(rec["scene"])).owner >= 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fg-weight", type=float, default=0.0)
    ap.add_argument("--pooled", action="store_true", help="also feed the mean conditioning through the class embedding")
    ap.add_argument("--guidance", type=float, default=2.0)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--val", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--base", default=str(ROOT / "configs/default/base/sd"), help="the SD-layout folder of the UNet")
    ap.add_argument("--patch", type=int, default=1, help="the decoder's patch_size (the UNet must take 3 x patch^2 channels)")
    ap.add_argument("--pred", default="sample", choices=["sample", "epsilon", "v_prediction"],
                    help="what the UNet predicts (the decoder's prediction_type)")
    ap.add_argument("--cond-scale", type=float, default=1.0,
                    help="multiply the perfect conditioning by this (the LLM's is ~0.25 of its per-token norm)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--grid", default=None, help="PNG of the last evaluation's first 16 samples")
    ap.add_argument("--device", default="cpu", help="e.g. cuda (the records say which)")
    ap.add_argument("--world", default=str(ROOT / "data" / "world"), help="folder holding the train and val splits")
    args = ap.parse_args()
    device = torch.device(args.device)
    world = Path(args.world)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    dec = DiffusionDecoder(model_name_or_path=args.base, from_scratch=True, vae=None, patch_size=args.patch,
                           num_tokens=4, seq_len=8, train_unet=True, scheduler="ddim", num_inference_steps=25,
                           guidance_scale=args.guidance, prediction_type=args.pred, pooled_conditioning=args.pooled)
    dec.set_trainable()
    cond = PerfectConditioning(dec.prompt_dim, dec.seq_len)
    dec.to(device)
    cond.to(device)
    train, val = records(world, "train"), records(world, "val")[: args.val]
    cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # image path -> (pixels, foreground): read once

    def example(r: dict) -> tuple[torch.Tensor, torch.Tensor]:
        if r["image"] not in cache:
            with Image.open(world / "train" / r["image"]) as im:
                cache[r["image"]] = (dec._pixels(im.convert("RGB")), torch.from_numpy(foreground(r)).float()[None])
        return cache[r["image"]]

    params = [p for p in dec.parameters() if p.requires_grad] + list(cond.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    sch = dec._train_scheduler
    history, start = [], time.time()
    for step in range(1, args.steps + 1):
        batch = [train[int(i)] for i in rng.integers(len(train), size=args.batch)]
        pixels, fg = (torch.stack(x).to(device) for x in zip(*[example(r) for r in batch]))
        x0 = dec.encode(pixels, sample=False)
        c = args.cond_scale * cond([r["caption"] for r in batch])
        drop = torch.rand(len(batch), device=device) < dec.cond_dropout
        c = torch.where(drop[:, None, None], dec.uncond.expand_as(c), c)
        t = torch.randint(0, sch.config.num_train_timesteps, (len(batch),), device=device)
        noise = torch.randn_like(x0)
        noisy = sch.add_noise(x0, noise, t)
        target = {"sample": x0, "epsilon": noise}.get(args.pred)
        if target is None:
            target = sch.get_velocity(x0, noise, t)
        err = (dec.predict(noisy, t, c) - target).pow(2)
        if args.patch > 1:  # back to pixels, where the foreground weights live
            err = F.pixel_shuffle(err, args.patch)
        if args.fg_weight:
            err = err * (1 + args.fg_weight * fg) / (1 + args.fg_weight * fg.mean())
        loss = err.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            dec.eval()
            with torch.no_grad():
                images = []
                for i in range(0, len(val), 16):
                    chunk = val[i:i + 16]
                    images += [to_pil(im) for im in dec.sample(args.cond_scale * cond([r["caption"] for r in chunk]))]
            dec.train()
            scores = [score_objects(detected=analyse(im), expected=expected_from_caption(r["caption"]))
                      for im, r in zip(images, val)]
            row = {"step": step, "device": str(device), "loss": float(loss.detach()), "seconds": round(time.time() - start, 1),
                   "object_f1": float(np.mean([s.f1 for s in scores])), "exact": float(np.mean([s.exact for s in scores])),
                   "colour_f1": float(np.mean([colour_score(im, expected_from_caption(r["caption"])).f1
                                               for im, r in zip(images, val)]))}
            history.append(row)
            print(json.dumps(row), flush=True)
            if args.json:  # after every evaluation, so a stopped probe keeps what it measured
                Path(args.json).write_text(json.dumps({"base": args.base, "patch": args.patch, "pred": args.pred, "cond_scale": args.cond_scale,
                                                       "fg_weight": args.fg_weight, "pooled": args.pooled,
                                                       "guidance": args.guidance, "steps": args.steps, "batch": args.batch,
                                                       "lr": args.lr, "history": history}, indent=1) + "\n")
            if args.grid:
                grid = Image.new("RGB", (64 * 8, 64 * 2))
                for k, im in enumerate(images[:16]):
                    grid.paste(im.resize((64, 64)), (64 * (k % 8), 64 * (k // 8)))
                grid.save(args.grid)


if __name__ == "__main__":
    main()

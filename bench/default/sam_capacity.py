"""How good can the default model's SAM get when its prompt is perfect? (isolates SAM from the LLM)

Trains the ``sam`` decoder plugin alone on world masks with an ideal prompt instead of the LLM's
``<seg>`` hidden state, and reports the thresholded IoU on val samples every ``--eval-every`` steps.
``--task classes``: semantic + part masks, a learned embedding per label as the sparse prompt (can SAM
draw a class it is told?). ``--task referring``: refCOCO-style expressions, the prompt the sum of learned
word vectors of the expression (can SAM resolve "the small blue object", "the circle on the left"
from the words alone, i.e. bind attributes and positions to pixels?). ``--sam DIR`` picks the SAM config
(``configs/default/base/sam`` = the shipped size); ``--set vision_config.hidden_size=128`` etc.
overrides fields of it, so sizes can be compared without new files.

    python bench/default/sam_capacity.py --steps 1500 --json bench/default/sam_capacity_base.json
    python bench/default/sam_capacity.py --steps 1500 --set vision_config.num_hidden_layers=4 ...

One thread per run (two runs side by side on the 2-core machine).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from omniplug.data.world_tasks import WorldTaskDataset
from omniplug.decoders.sam import SamDecoder
from omniplug.types import DecoderInput

ROOT = Path(__file__).resolve().parents[2]


def sam_dir(base: Path, overrides: list[str], out: Path) -> Path:
    shutil.copytree(base, out, dirs_exist_ok=True)
    config = json.loads((out / "config.json").read_text())
    for item in overrides:
        key, value = item.split("=", 1)
        node = config
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = json.loads(value)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    return out


TASKS = {"classes": ("semantic", "part"), "referring": ("referring",)}


def load(split: str, n: int, seed: int, task: str) -> list:
    root = ROOT / "data" / "world" / split
    return [WorldTaskDataset(root=str(root), task=t, split=split, n=n, seed=seed) for t in TASKS[task]]


def batch(sam: SamDecoder, table: nn.Embedding, vocab: dict[str, int], samples: list):
    images = [s.images[0] for s in samples]
    pixels = sam.prepare_images(images)
    words = [s.meta["labels"][0].lower().split() for s in samples]  # a class name, or a referring expression
    rows = [table(torch.tensor([vocab.setdefault(w, len(vocab)) for w in ws])).sum(0) for ws in words]
    prompts = torch.stack(rows)[:, None, :]
    inp = DecoderInput(prompts=prompts, batch_index=torch.arange(len(samples)), batch_size=len(samples), pixels=pixels)
    targets = [sam.prepare_target(s.targets["seg"][0], s.images[0]) for s in samples]
    return inp, targets


def evaluate(sam, table, vocab, samples, bs: int = 32) -> dict[str, float]:
    inter = union = 0.0
    ious = []
    with torch.no_grad():
        for i in range(0, len(samples), bs):
            inp, targets = batch(sam, table, vocab, samples[i:i + bs])
            out = sam(inp)
            for logits, t in zip(out.mask_logits, targets):
                p, t = (logits > 0).numpy(), t.numpy() > 0.5
                inter += (p & t).sum()
                union += (p | t).sum()
                ious.append((p & t).sum() / max((p | t).sum(), 1))
    return {"ciou": float(inter / max(union, 1)), "miou": float(np.mean(ious))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sam", default=str(ROOT / "configs/default/base/sam"))
    ap.add_argument("--set", action="append", default=[], help="config field override, e.g. vision_config.hidden_size=128")
    ap.add_argument("--task", choices=sorted(TASKS), default="classes")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)

    with tempfile.TemporaryDirectory() as tmp:
        sam = SamDecoder(model_name_or_path=str(sam_dir(Path(args.sam), args.set, Path(tmp) / "sam")),
                         from_scratch=True, freeze_image_encoder=False, freeze_prompt_encoder=False)
    sam.set_trainable()
    table = nn.Embedding(256, sam.prompt_dim)
    vocab: dict[str, int] = {}
    train = load("train", 20000, 0, args.task)
    val_sets = load("val", 500, 1, args.task)
    val = [d[int(i)] for d in val_sets for i in np.arange(args.val // len(val_sets))]
    params = [p for p in sam.parameters() if p.requires_grad] + list(table.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100))
    n_params = sum(p.numel() for p in sam.model.parameters())
    history, start = [], time.time()
    for step in range(1, args.steps + 1):
        picks = [train[int(rng.integers(len(train)))] for _ in range(args.batch)]
        samples = [d[int(rng.integers(len(d)))] for d in picks]
        inp, targets = batch(sam, table, vocab, samples)
        losses = sam.loss(sam(inp), targets)
        loss = sum(losses.values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % args.eval_every == 0 or step == args.steps:
            sam.eval()
            row = {"step": step, "loss": float(loss.detach()), "seconds": round(time.time() - start, 1),
                   **evaluate(sam, table, vocab, val)}
            sam.train()
            history.append(row)
            print(json.dumps(row), flush=True)
    result = {"task": args.task, "sam": args.sam, "overrides": args.set, "params": n_params, "steps": args.steps, "batch": args.batch,
              "lr": args.lr, "history": history}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Does torch.compile make the default recipe's CPU training step faster? Times forward + backward + AdamW on
the recipe's last-phase mixture (real world batches, batch 16), eager against submodules compiled in place
(``nn.Module.compile``: weights and state-dict names unchanged).

    python bench/default/compile_probe.py --variants eager,llm,llm+clip+sam --steps 40 --out bench/default/compile_cpu.json

Each variant builds the model afresh with the same seed and sees the same batches; the first ``--warmup`` steps
(compilation happens there) are timed apart from the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from datetime import date
from pathlib import Path

import torch

from omniplug.build import build_dataset, build_model
from omniplug.config import load_config
from omniplug.data.collate import Collator
from omniplug.train.loop import make_optimizer, typical_lengths
from omniplug.train.mixing import MixedDataset, MixtureStream, RankBatches

ROOT = Path(__file__).resolve().parents[2]
PARTS = {  # variant piece -> the module compiled in place
    "llm": lambda m: m.llm.model.model,  # LlamaModel (the LM head and loss stay eager)
    "clip": lambda m: m.encoder.model,  # CLIPVisionModel
    "sam": lambda m: m.decoders["seg"].model.mask_decoder,
}


def batches(config, n: int, batch: int, window: int) -> tuple[list, float]:
    model = build_model(config)
    collator = Collator(model, max_length=config.data.max_length)
    names = list(config.data.train)
    datasets = [build_dataset(config, name) for name in names]
    stream = MixtureStream(sizes=[len(d) for d in datasets], ratios=[config.data.train[k] for k in names], seed=0)
    sampler = RankBatches(stream, start=0, batch_size=batch, rank=0, world_size=1, group_window=window,
                          lengths=typical_lengths(datasets, collator) if window else None)
    data = MixedDataset(datasets)
    out, started = [], time.perf_counter()
    for idx in sampler:
        out.append(collator([data[i] for i in idx]))
        if len(out) == n:
            return out, (time.perf_counter() - started) / n
    raise RuntimeError("stream ended")


def run(config, variant: str, data: list, warmup: int, dynamic: bool | None) -> dict:
    torch.manual_seed(0)
    model = build_model(config)
    model.train()
    for piece in [p for p in variant.split("+") if p != "eager"]:
        PARTS[piece](model).compile(dynamic=dynamic)
    opt = make_optimizer(model, weight_decay=0.0, lr=1e-4)
    times, losses = [], []
    for batch in data:
        t0 = time.perf_counter()
        out = model(batch)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
        losses.append(float(out.loss.detach()))
    rest = times[warmup:]
    return {"variant": variant, "warmup_s": round(sum(times[:warmup]), 1),
            "steps_per_s": round(len(rest) / sum(rest), 3), "first_losses": [round(x, 4) for x in losses[:3]]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(ROOT / "configs/default/omni_tiny.yaml"))
    ap.add_argument("--variants", default="eager,llm,llm+clip+sam")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--window", type=int, default=0, help="trainer.length_group_window of the batches")
    ap.add_argument("--dynamic", choices=["auto", "true", "false"], default="auto")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    config = load_config(args.config, ["one_model.weights=null"])
    data, load_s = batches(config, args.steps, config.trainer.batch_size_train, args.window)
    print(f"reading + collating one batch: {load_s:.3f} s", flush=True)
    dynamic = {"auto": None, "true": True, "false": False}[args.dynamic]
    rows = []
    for variant in args.variants.split(","):
        rows.append(run(config, variant, data, args.warmup, dynamic))
        print(json.dumps(rows[-1]), flush=True)
    record = {"date": date.today().isoformat(), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "cpus": os.cpu_count(), "steps": args.steps, "warmup": args.warmup, "window": args.window,
              "dynamic": args.dynamic, "load_s_per_batch": round(load_s, 3), "rows": rows}
    if args.out:
        args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()

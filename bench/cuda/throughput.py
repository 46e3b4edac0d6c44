"""The default model on a CUDA GPU: training steps per second (fp32 and bf16 autocast) of its recipe, and
inference latency, one request at a time and batched.

    python bench/cuda/throughput.py [--steps 60] [--out FILE]

Training runs ``configs/default/omni_tiny.yaml`` from scratch (``one_model.weights=null``) for ``--steps``
optimizer steps of 16 samples on a small world split (``--world-n`` scenes, generated into ``--world``), once
with ``trainer.amp=false`` and once with ``trainer.amp=true``; the first ``--warmup`` steps are left out of the
rate. Inference: the shipped weights, 32 mixed requests (caption, VQA, referring, drawing). Prints one JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "default" / "omni_tiny.yaml"
DATASETS = ("caption_vqa", "referring", "reasoning", "semantic", "part", "panoptic", "generation", "editing")


def train_rate(*, amp: bool, steps: int, warmup: int, world: Path, world_n: int, out: Path) -> dict:
    from omniplug.config import load_config
    from omniplug.train import train

    overrides = ["one_model.weights=null", f"trainer.amp={str(amp).lower()}", "trainer.max_epoch=1",
                 f"trainer.iters_per_epoch={steps}", f"trainer.output_dir={out}", "trainer.save_every=0",
                 "trainer.eval_every=0", "data.eval=[]", "trainer.expect=null", "trainer.warmup_steps=10", "trainer.log_every=1"]
    overrides += [f"dataset.{name}.{key}={value}" for name in DATASETS
                  for key, value in (("root", world), ("n", world_n))]
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)  # one process, two precisions: accelerate keeps the first otherwise
    result = train(load_config(CONFIG, overrides))
    with open(out / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    step_seconds = [float(r["seconds"]) for r in rows if int(r["step"]) > warmup]  # each step's own time, data included
    rate = len(step_seconds) / sum(step_seconds)
    return {"amp": amp, "steps": result.steps, "seconds": round(result.seconds, 2), "steps_per_s": round(rate, 3),
            "samples_per_s": round(16 * rate, 1), "first_loss": result.first_loss, "last_loss": result.last_loss,
            "max_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def infer_latency(world: Path) -> dict:
    from omniplug.infer.pipeline import Pipeline, Request

    pipe = Pipeline.from_config(CONFIG, device="cuda")
    images = sorted((world / "images").glob("*.png"))[:8]
    prompts = ("Describe the image.", "How many shapes are there?", "Please segment the sky.")
    requests = [Request(prompts[i % 3], [images[i % len(images)]]) if i % 4 else Request("Draw a small red circle.", [])
                for i in range(32)]
    pipe.batch(requests[:4])  # warm-up: kernels, allocator
    torch.cuda.synchronize()
    t = time.perf_counter()
    for r in requests:
        pipe.batch([r])
    torch.cuda.synchronize()
    single = (time.perf_counter() - t) / len(requests)
    t = time.perf_counter()
    pipe.batch(requests, batch_size=16)
    torch.cuda.synchronize()
    batched = (time.perf_counter() - t) / len(requests)
    return {"requests": len(requests), "ms_per_request_single": round(1000 * single, 1),
            "ms_per_request_batched16": round(1000 * batched, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--world", default="/tmp/omniplug_world_small")
    parser.add_argument("--world-n", type=int, default=2000)
    parser.add_argument("--work", default="/tmp/omniplug_cuda_bench")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/cuda/throughput.py needs a CUDA device")
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "cpus": os.cpu_count(), "python": platform.python_version(), "train": []}
    world, work = Path(args.world), Path(args.work)
    for amp in (False, True):
        torch.cuda.reset_peak_memory_stats()
        report["train"].append(train_rate(amp=amp, steps=args.steps, warmup=args.warmup, world=world,
                                          world_n=args.world_n, out=work / f"amp_{amp}"))
        print(json.dumps(report["train"][-1]), flush=True)
    report["infer"] = infer_latency(world)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()

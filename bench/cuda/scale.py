"""What more compute buys the default recipe: as many samples as fit in a time budget on one GPU, then the eval.

    python bench/cuda/scale.py --budget-s 520 --out DIR
    python bench/cuda/scale.py --rates-only --batches 16,64,256 --out DIR    # step 2 alone

The default recipe (``configs/default/omni_tiny.yaml`` from scratch) trains 5,000 steps of 16 samples (80,000
samples, ~50 minutes on the 2-core CPU). On a GPU the step of this 10 M-parameter model is bound by kernel
launches, so a larger batch costs little more per step. This script

1. generates the recipe's 20,000-scene world in the background (as ``omniplug train`` would on first use);
2. meanwhile measures training steps per second at several batch sizes, every task in the mixture (the last
   curriculum phase, the slowest), on a small world;
3. picks the batch size that fits the most samples into what is left of the budget with at least
   ``--min-steps`` optimizer steps, and trains the recipe at that batch size, its curriculum phases scaled to
   the same fractions of the run (600 and 1,600 of 5,000 steps);
4. evaluates the result on 200 samples per task (``data.world_eval.samples=200``, the figure the CPU runs are
   compared on: ``bench/default/eval200_v14.json``).

Writes ``scale.json`` (rates, choice, wall times), the eval JSON, the run's metrics.csv and loss curve, and the
trained weights split in two safetensors files (``weights_0of2`` / ``weights_1of2``: a lent machine returns
files of at most 16 MiB; ``--join`` rebuilds ``trainable.safetensors``).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "default" / "omni_tiny.yaml"
DATASETS = ("caption_vqa", "referring", "reasoning", "semantic", "part", "panoptic", "generation", "editing")
RECIPE_STEPS, PHASE_ENDS = 5000, (600, 1600)  # the recipe's curriculum, scaled to the run's length


def measure_rate(*, batch: int, steps: int, warmup: int, world: Path, world_n: int, work: Path, workers: int) -> float:
    """Optimizer steps per second at ``batch`` with every task in the mixture (data loading included)."""
    from accelerate.state import AcceleratorState

    from omniplug.config import load_config
    from omniplug.train import train

    out = work / f"rate_b{batch}"
    overrides = ["one_model.weights=null", "trainer.max_epoch=1", f"trainer.iters_per_epoch={steps}",
                 f"trainer.batch_size_train={batch}", f"trainer.num_workers={workers}", f"trainer.output_dir={out}",
                 "trainer.save_every=0", "trainer.eval_every=0", "data.eval=[]", "trainer.expect=null", "data.schedule=[]",
                 "trainer.warmup_steps=10", "trainer.log_every=1"]
    overrides += [f"dataset.{name}.{key}={value}" for name in DATASETS for key, value in (("root", world), ("n", world_n))]
    AcceleratorState._reset_state(True)
    train(load_config(CONFIG, overrides))
    with open(out / "metrics.csv", newline="") as fh:
        seconds = [float(r["seconds"]) for r in csv.DictReader(fh) if int(r["step"]) > warmup]
    shutil.rmtree(out, ignore_errors=True)
    return len(seconds) / sum(seconds)


def choose(rates: dict[int, float], seconds: float, min_steps: int) -> tuple[int, int]:
    """The batch size giving the most samples in ``seconds`` with >= ``min_steps`` steps, and its step count.

    The rate is the last phase's; the first phases (captions alone, then no generation) run faster, which
    leaves a margin."""
    fits = {b: int(r * seconds) // 50 * 50 for b, r in rates.items()}
    ok = [b for b, s in fits.items() if s >= min_steps] or [min(rates)]
    batch = max(ok, key=lambda b: b * fits[b])
    return batch, max(fits[batch], 100)


def scaled_config(batch: int, steps: int, workers: int, out_dir: Path) -> Path:
    """A config beside the default one (so ``${config_dir}`` finds its base models) with the run's sizes."""
    a, b = (max(1, round(e * steps / RECIPE_STEPS)) for e in PHASE_ENDS)
    path = CONFIG.with_name("_scale_run.yaml")
    path.write_text(
        "includes: [omni_tiny.yaml]\n"
        "one_model: {weights: null}\n"
        "data:\n"
        "  eval: []\n"
        "  schedule:\n"
        f"    - {{until_step: {a}, train: {{caption_vqa: 1}}}}\n"
        f"    - {{until_step: {b}, train: {{caption_vqa: 2, referring: 2, reasoning: 1, semantic: 2, part: 1,"
        " panoptic: 1}}\n"
        f"trainer: {{iters_per_epoch: {steps}, batch_size_train: {batch}, num_workers: {workers},"
        f" output_dir: {out_dir}, save_every: {max(50, steps // 5)}, eval_every: 0, log_every: 10, expect: null}}\n")
    return path


def newest_weights(run: Path) -> Path:
    """The run's final weights, else its newest complete checkpoint's (a run cut off by the budget)."""
    if (run / "trainable.safetensors").is_file():
        return run
    done = sorted(p.parent for p in run.glob("checkpoints/step_*/COMPLETE"))
    if not done:
        raise SystemExit(f"{run} holds no weights: the training run ended before its first checkpoint")
    return done[-1]


def split_weights(src: Path, out: Path, parts: int = 2) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(src))
    bins: list[dict] = [{} for _ in range(parts)]
    for name in sorted(tensors, key=lambda n: -tensors[n].nbytes):  # largest first, into the lightest part
        min(bins, key=lambda b: sum(t.nbytes for t in b.values()))[name] = tensors[name]
    for i, part in enumerate(bins):
        save_file(part, str(out / f"weights_{i}of{parts}.safetensors"))


def join_weights(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = {}
    for part in sorted(folder.glob("weights_*of*.safetensors")):
        tensors.update(load_file(str(part)))
    save_file(tensors, str(folder / "trainable.safetensors"))
    print(f"{folder / 'trainable.safetensors'}: {len(tensors)} tensors")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-s", type=float, default=520, help="wall seconds for everything, eval included")
    parser.add_argument("--eval-reserve-s", type=float, default=110, help="seconds kept for eval and writing")
    parser.add_argument("--startup-s", type=float, default=45, help="seconds the run spends before its first step")
    parser.add_argument("--batches", default="16,64,128,256")
    parser.add_argument("--rate-steps", type=int, default=22)
    parser.add_argument("--min-steps", type=int, default=1500)
    parser.add_argument("--max-steps", type=int, default=None, help="cap on the chosen run's steps (smoke tests)")
    parser.add_argument("--eval-samples", type=int, default=200)
    parser.add_argument("--rates-only", action="store_true", help="measure the rates (step 2) and stop")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--world-n", type=int, default=20000, help="the recipe's world (dataset.*.n)")
    parser.add_argument("--work", default="/tmp/omniplug_scale")
    parser.add_argument("--out", default="bench/cuda/scale_out")
    parser.add_argument("--join", default=None, help="rebuild trainable.safetensors from the split files in this folder")
    args = parser.parse_args()
    if args.join:
        return join_weights(Path(args.join))
    import torch

    started = time.monotonic()
    left = lambda: args.budget_s - (time.monotonic() - started)  # noqa: E731
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    save = lambda r: (out / "scale.json").write_text(json.dumps(r, indent=1) + "\n")  # noqa: E731  after each stage
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": torch.cuda.get_device_name(0)
                    if torch.cuda.is_available() else "cpu", "torch": torch.__version__, "cpus": os.cpu_count()}
    world = REPO / "data" / "world" / "train"
    gen = None if args.rates_only else subprocess.Popen([sys.executable, "-c", "from omniplug.data.world_tasks import ensure_split; "
                            f"ensure_split(root={str(world)!r}, split='train', n={args.world_n}, seed=0)"],
                           stdout=subprocess.DEVNULL, stderr=open(work / "world.log", "w"))
    small = work / "world_small"
    from omniplug.data.world_tasks import ensure_split

    ensure_split(root=small, split="train", n=300, seed=0)
    report["rates"] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        report["rates"][batch] = round(measure_rate(batch=batch, steps=args.rate_steps, warmup=8, world=small,
                                                    world_n=300, work=work, workers=args.workers), 3)
        print(f"batch {batch}: {report['rates'][batch]} steps/s, {left():.0f} s left", flush=True)
        save(report)
    if gen is None:
        return None
    if gen.wait() != 0:
        raise SystemExit(f"world generation failed: {(work / 'world.log').read_text()[-2000:]}")
    report["world_ready_s"] = round(time.monotonic() - started, 1)
    batch, steps = choose(report["rates"], left() - args.eval_reserve_s - args.startup_s, args.min_steps)
    steps = min(steps, args.max_steps or steps)
    report["choice"] = {"batch": batch, "steps": steps, "samples": batch * steps,
                        "x_cpu_recipe_samples": round(batch * steps / (RECIPE_STEPS * 16), 2)}
    print(json.dumps(report["choice"]), flush=True)
    save(report)
    run = work / "run"
    config = scaled_config(batch, steps, args.workers, run)
    t = time.monotonic()
    cmd = [sys.executable, "-m", "omniplug", "train", "-c", str(config)]
    try:
        subprocess.run(cmd, timeout=max(30.0, left() - args.eval_reserve_s + 30), check=True,
                       stdout=open(out / "train.log", "w"), stderr=subprocess.STDOUT)
        report["train_finished"] = True
    except subprocess.TimeoutExpired:
        report["train_finished"] = False  # cut off by the budget: the newest checkpoint is evaluated
    report["train_s"] = round(time.monotonic() - t, 1)
    weights = newest_weights(run)
    report["weights"] = weights.name
    save(report)
    for name in ("metrics.csv", "loss_curve.png"):
        if (run / name).is_file():
            shutil.copy(run / name, out / name)
    split_weights(weights / "trainable.safetensors", out)  # first: the weights come back even if the eval fails
    t = time.monotonic()
    with open(out / "eval200.json", "w") as fh:
        subprocess.run([sys.executable, "-m", "omniplug", "eval", "-c", str(config), f"one_model.weights={weights}",
                        f"data.world_eval.samples={args.eval_samples}", "--json", "--device", "cuda" if torch.cuda.is_available()
                        else "cpu"], stdout=fh, stderr=open(out / "eval.log", "w"), check=True)
    report["eval_s"] = round(time.monotonic() - t, 1)
    report["total_s"] = round(time.monotonic() - started, 1)
    save(report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()

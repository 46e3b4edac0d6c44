"""The default recipe's eval figures against the samples it trained on: one line per task, log-scale samples.

    python bench/default/samples_curve.py [--out bench/default/samples_curve.png]

Reads the 200-samples-per-task evals of the same recipe at different sample counts (those present): the quarter
run (20,000 samples: on the 2-core CPU, eval200_quarter_cpu.json from bench/default/quarter.yaml; the
thirteenth session's H200 run, bench/cuda/eval200_scale_h200.json, where the CPU one is absent), the half run
(eval200_half.json, 40,000: bench/default/half.yaml), v14 as shipped (eval200_v14.json, 80,000), x2
(eval200_x2.json, 160,000: bench/default/x2.yaml), x4 (eval200_x4.json, 320,000: the shipped recipe since v19)
and x8 (eval200_x8.json, 640,000: bench/default/x8.yaml), each once a session has trained and evaluated it. Runs of the same recipe with another seed (OTHER_SEEDS) are
drawn as open circles on the mean: the spread between seeds, next to the gain between sample counts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "bench" / "default"
RUNS = ((20_000, (DEFAULT / "eval200_quarter_cpu.json", REPO / "bench" / "cuda" / "eval200_scale_h200.json")),
        (40_000, (DEFAULT / "eval200_half.json",)),
        (80_000, (DEFAULT / "eval200_v14.json",)),
        (160_000, (DEFAULT / "eval200_x2.json",)),
        (320_000, (DEFAULT / "eval200_x4.json",)),
        (640_000, (DEFAULT / "eval200_x8.json",)))
OTHER_SEEDS = ((40_000, DEFAULT / "eval200_half_seed1.json"), (40_000, DEFAULT / "eval200_half_seed2.json"),
               (320_000, DEFAULT / "eval200_x4_seed1.json"))
FIGURES = (("caption", "object_f1", 0.95), ("vqa", "accuracy", 0.90), ("referring", "ciou", 0.90),
           ("reasoning", "giou", 0.80), ("semantic", "miou", 0.90), ("part", "miou", 0.80), ("panoptic", "pq", 0.75),
           ("generation", "colour_f1", None))


def _mean(result: dict) -> float:
    return sum(float(result[t][k]) for t, k, goal in FIGURES if goal) / 7


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "bench" / "default" / "samples_curve.png"))
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(n, json.loads(found.read_text())) for n, paths in RUNS
            for found in [next((p for p in paths if p.is_file()), None)] if found]
    if len(runs) < 2:
        raise SystemExit(f"need at least two of {[str(p) for _, paths in RUNS for p in paths]}")
    fig, ax = plt.subplots(figsize=(8, 5))
    for i, (task, key, target) in enumerate(FIGURES):
        colour = f"C{i}"
        xs, ys = [n for n, _ in runs], [float(r[task][key]) for _, r in runs]
        ax.plot(xs, ys, "o-", color=colour, label=f"{task} {key}" + (f" (target {target})" if target else ""))
        if target:
            ax.axhline(target, color=colour, linestyle=":", linewidth=0.8)
    means = [_mean(r) for _, r in runs]
    ax.plot([n for n, _ in runs], means, "k-", linewidth=2.5, label="mean of the seven mask/text figures")
    others = [(n, _mean(json.loads(path.read_text()))) for n, path in OTHER_SEEDS if path.is_file()]
    if others:
        ax.plot([n for n, _ in others], [m for _, m in others], "o", markerfacecolor="none", markeredgecolor="k",
                markersize=9, label="mean, same recipe with another seed")
    ax.set_xscale("log")
    ax.set_xlabel("training samples (same recipe and curriculum; 200 eval samples per task)")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title("Default recipe: eval figures vs training samples (dotted: issue targets)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"{args.out}: {len(runs)} runs; means {[round(m, 3) for m in means]}; other seeds "
          f"{[(n, round(m, 3)) for n, m in others]}")


if __name__ == "__main__":
    main()

"""Reacher closed-loop: the continuous action adapters ranked with confidence intervals, against the expert and the
observation-blind baseline (zero torque: the arm stays where it starts).

    python bench/actions/reacher.py --agent regress_s0=RUN --agent regress_s1=RUN --agent bins_s0=RUN ... \
        --episodes 100 --threads 1 --jobs 2                        # -> reacher.json, reacher_<best>.gif

``--agent NAME=RUN`` rolls out a training run with the config it saved (``RUN/config.yaml``) and its final weights;
names ``ADAPTER_sSEED`` pool the seeds of one adapter. Every policy plays the same held-out seeds (100000+; the
demos use 0..N-1), so differences are paired per episode: the intervals of "adapter − zero torque" and of
"adapter − next adapter" come from a bootstrap over episodes (an adapter's seeds pooled), 95 %.
Measures: return (Reacher-v5's reward: −distance − control cost, summed over 50 steps), final distance fingertip →
target (metres) and success (ends within 2 cm; Wilson interval).
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
BOOT = 2000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", action="append", required=True, metavar="NAME=RUN",
                   help="a training run (RUN/config.yaml + weights); NAME ADAPTER_sSEED pools seeds (repeatable)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--out", default=str(Path(__file__).with_name("reacher.json")))
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--jobs", type=int, default=1, help="policies evaluated side by side in processes")
    args = p.parse_args(argv)

    from omniplug.eval.bench_record import record_header

    agents: dict[str, str] = {}
    for item in args.agent:
        name, sep, run = item.partition("=")
        if not sep or not (Path(run) / "config.yaml").is_file():
            p.error(f"--agent {item!r}: give NAME=RUN, RUN a training run folder with config.yaml")
        agents[name] = run
    jobs = [("expert", None), ("zero_torque", None), *agents.items()]
    one = partial(_rollout, episodes=args.episodes, seed=args.seed, threads=args.threads)
    if args.jobs <= 1:
        rows = [one(job) for job in jobs]
    else:
        with ProcessPoolExecutor(args.jobs) as pool:
            rows = list(pool.map(one, jobs))
    per_episode = dict(zip([name for name, _ in jobs], rows))
    result = {**record_header(repo=REPO, config=str(REPO / "configs" / "reacher" / "reacher.yaml"), argv=argv),
              "episodes": args.episodes, "seed": args.seed, "agents": agents,
              "policies": {name: _summary(ep) for name, ep in per_episode.items()}}
    result["adapters"] = _rank(per_episode, agents)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    best = result["adapters"][0]["seeds"][0] if result["adapters"] else None
    if best is not None:
        _rollout((best, agents[best]), episodes=4, seed=args.seed, threads=args.threads,
                 gif=Path(args.out).with_name(f"reacher_{best.rsplit('_s', 1)[0]}.gif"))
    print(json.dumps({a["adapter"]: a["return_vs_zero"] for a in result["adapters"]}, indent=1))
    return 0


def _rollout(job: tuple[str, str | None], *, episodes: int, seed: int, threads: int,
             gif: Path | None = None) -> dict[str, list[float]]:
    import torch

    from omniplug.envs.base import make_env
    from omniplug.envs.rollout import ConstantPolicy, evaluate, model_policy

    torch.set_num_threads(threads)
    name, run = job
    if run is None:
        policy = "expert" if name == "expert" else ConstantPolicy([0.0, 0.0], make_env("reacher").action_space)
    else:
        policy = model_policy(Path(run) / "config.yaml", [f"one_model.weights={run}"])
    report = evaluate(policy, "reacher", episodes=episodes, seed=seed, gif=gif)
    if gif is not None:
        return {}
    episodes_ = sorted(report.episodes, key=lambda e: e.seed)
    print(name, f"return {report.mean_return:.2f}", f"success {report.success_rate:.2f}", flush=True)
    return {"seed": [e.seed for e in episodes_], "return": [e.total_return for e in episodes_],
            "final_distance": [e.metrics["final_distance"] for e in episodes_],
            "success": [float(e.success) for e in episodes_]}


def _summary(ep: dict[str, list[float]]) -> dict[str, float]:
    n = len(ep["return"])
    lo, hi = _wilson(sum(ep["success"]), n)
    return {"mean_return": float(np.mean(ep["return"])), "mean_final_distance": float(np.mean(ep["final_distance"])),
            "success_rate": float(np.mean(ep["success"])), "success_ci95": [lo, hi]}


def _rank(per_episode: dict[str, dict], agents: dict[str, str]) -> list[dict]:
    """Per adapter (seeds pooled): paired differences to zero torque and to the next adapter, bootstrap CIs."""
    groups: dict[str, list[str]] = {}
    for name in agents:
        groups.setdefault(name.rsplit("_s", 1)[0] if "_s" in name else name, []).append(name)
    zero = np.asarray(per_episode["zero_torque"]["return"])
    zero_d = np.asarray(per_episode["zero_torque"]["final_distance"])
    rows = []
    for adapter, names in groups.items():
        ret = np.stack([per_episode[n]["return"] for n in names])  # (seeds, episodes)
        dist = np.stack([per_episode[n]["final_distance"] for n in names])
        succ = np.stack([per_episode[n]["success"] for n in names])
        rows.append({"adapter": adapter, "seeds": names, "mean_return": float(ret.mean()),
                     "mean_return_per_seed": [float(r.mean()) for r in ret],
                     "return_vs_zero": _paired(ret - zero), "final_distance_vs_zero": _paired(dist - zero_d),
                     "mean_final_distance": float(dist.mean()), "success_rate": float(succ.mean()),
                     "success_ci95": list(_wilson(int(succ.sum()), succ.size)), "_ret": ret})
    rows.sort(key=lambda r: -r["mean_return"])
    for a, b in zip(rows, rows[1:]):  # each adapter against the one ranked below it (same episodes)
        k = min(len(a["_ret"]), len(b["_ret"]))
        a["return_vs_next"] = {"next": b["adapter"], **_paired(a["_ret"][:k] - b["_ret"][:k])}
    for r in rows:
        del r["_ret"]
    return rows


def _paired(diff: np.ndarray) -> dict[str, float]:
    """Mean of per-episode differences (seeds, episodes) and its 95 % bootstrap interval (episodes resampled)."""
    diff = np.atleast_2d(diff)
    rng = np.random.default_rng(0)
    idx = rng.integers(diff.shape[1], size=(BOOT, diff.shape[1]))
    means = diff[:, idx].mean(axis=(0, 2))
    lo, hi = np.quantile(means, [0.025, 0.975])
    return {"mean": float(diff.mean()), "ci95": [float(lo), float(hi)]}


def _wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 0.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(max(centre - half, 0.0)), float(min(centre + half, 1.0))


if __name__ == "__main__":
    sys.exit(main())

"""The action-adapter comparison: one architecture, one budget, several adapters.

For each trained run: held-out open-loop action error on the validation episodes of its demos (the
first action of each predicted chunk vs the expert's; discrete: accuracy, continuous: mean absolute
error in environment units and as a fraction of the action range) next to the closed-loop figures of
`omniplug eval --env` (read from the run's eval/metrics.json).

    python bench/actions/adapter_compare.py --out bench/actions/adapters_state.json \
        babyai:output/babyai_cells babyai:output/babyai_cells_words reacher:output/reacher_state_act_rvq ...

Each run is read back with the config its training saved (``RUN/config.yaml``: adapter, demos,
frame history and every override), its weights from ``RUN``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from omniplug.actions.episodes import read_episode, read_index
from omniplug.build import build_model
from omniplug.config import load_config
from omniplug.envs.base import Observation
from omniplug.envs.rollout import ModelPolicy, demo_history, demo_setting


def open_loop(model, demos: Path, *, val_episodes: int, limit: int, history: int = 1,
              reasoning: bool = False) -> dict[str, float]:
    """Expert frames of the last ``val_episodes`` episodes (the demos reader's val split) -> first action."""
    records = read_index(demos)[-val_episodes:]
    policy = ModelPolicy(model, history=history, reasoning=reasoning)
    obs, expert = [], []
    for record in records:
        episode = read_episode(demos, record)
        for t in range(len(episode.actions)):
            earlier = tuple(episode.frames[max(t - history + 1, 0):t])
            obs.append(Observation(image=episode.frames[t], instruction=episode.instruction, history=earlier))
            expert.append(episode.actions[t])
    obs, expert = obs[:limit], expert[:limit]
    predicted = []
    for i in range(0, len(obs), 64):
        predicted.extend(policy.act(obs[i:i + 64]))
    space = model.decoders["act"].space
    first = [np.asarray(p)[0] if p is not None else None for p in predicted]
    if space.is_discrete:
        hits = [int(p) == int(e) for p, e in zip(first, expert) if p is not None]
        majority = np.bincount(np.asarray(expert, dtype=np.int64)).max() / len(expert)  # always the commonest action
        return {"steps": len(obs), "accuracy": float(np.mean(hits)) if hits else 0.0,
                "baseline_majority_accuracy": float(majority), "invalid": sum(p is None for p in first)}
    pairs = [(np.asarray(p, dtype=np.float64), np.asarray(e, dtype=np.float64)) for p, e in zip(first, expert) if p is not None]
    err = np.abs(np.stack([p for p, _ in pairs]) - np.stack([e for _, e in pairs]))
    span = np.asarray(space.high, dtype=np.float64) - np.asarray(space.low, dtype=np.float64)
    truth = np.stack([e for _, e in pairs])
    median = np.abs(truth - np.median(truth, axis=0)).mean()  # a policy that ignores the observation
    return {"steps": len(obs), "mae": float(err.mean()), "mae_of_range": float((err / span).mean()),
            "baseline_median_mae": float(median), "invalid": sum(p is None for p in first)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="group:run_dir (the run's saved config.yaml is used)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--limit", type=int, default=1000, help="validation steps per run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for spec in args.runs:
        group, run = spec.split(":")
        cfg = load_config(Path(run) / "config.yaml", [f"one_model.weights={run}"])
        model = build_model(cfg).eval()
        entry = cfg.entry("dataset", cfg.data.eval[0], where="adapter_compare")
        start = time.perf_counter()
        row = {"group": group, "decoder": cfg.one_model.decoder, "run": run, "history": demo_history(cfg),
               **open_loop(model, Path(entry.params["data_dir"]), val_episodes=int(entry.params["val_episodes"]),
                           limit=args.limit, history=demo_history(cfg),
                           reasoning=demo_setting(cfg, "reasoning", "none") != "none")}
        row["open_loop_seconds"] = round(time.perf_counter() - start, 1)
        closed = Path(run) / "eval" / "metrics.json"
        if closed.is_file():
            m = json.loads(closed.read_text())
            row.update({k: m[k] for k in ("episodes", "success_rate", "mean_return", "mean_length")})
        train_log = Path(run) / "metrics.csv"
        if train_log.is_file():
            lines = train_log.read_text().splitlines()
            row["train_steps"] = int(lines[-1].split(",")[0])
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

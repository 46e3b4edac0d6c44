"""Does a trained BabyAI policy read its mission? Held-out expert frames, acted on twice: with their own
mission and with another frame's (the missions rolled by one). A mission-blind policy answers the same.

    python bench/actions/mission_swap.py output/babyai_cells [--limit 1000]

Reads the run's saved config (RUN/config.yaml) and weights (RUN); prints and returns JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from omniplug.actions.episodes import read_episode, read_index
from omniplug.build import build_model
from omniplug.config import load_config
from omniplug.envs.base import Observation
from omniplug.envs.rollout import ModelPolicy, demo_setting


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(Path(args.run) / "config.yaml", [f"one_model.weights={args.run}"])
    model = build_model(cfg).eval()
    entry = cfg.entry("dataset", cfg.data.eval[0], where="mission_swap")
    demos, val = Path(entry.params["data_dir"]), int(entry.params["val_episodes"])
    frames, missions, expert = [], [], []
    for record in read_index(demos)[-val:]:
        episode = read_episode(demos, record)
        for t, action in enumerate(episode.actions):
            frames.append(episode.frames[t])
            missions.append(episode.instruction)
            expert.append(int(action))
    frames, missions, expert = frames[:args.limit], missions[:args.limit], np.asarray(expert[:args.limit])
    swapped = missions[1:] + missions[:1]
    policy = ModelPolicy(model, reasoning=demo_setting(cfg, "reasoning", "none") != "none")

    def act(texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(frames), 64):
            obs = [Observation(image=f, instruction=m) for f, m in zip(frames[i:i + 64], texts[i:i + 64])]
            out.extend(int(np.asarray(a)[0]) if a is not None else -1 for a in policy.act(obs))
        return np.asarray(out)

    own, other = act(missions), act(swapped)
    differs = np.asarray([a != b for a, b in zip(missions, swapped)])
    result = {"run": args.run, "steps": len(frames), "accuracy_own_mission": float((own == expert).mean()),
              "accuracy_swapped_mission": float((other == expert).mean()),
              "actions_changed_when_the_mission_changes": float((own != other)[differs].mean())}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Replay a driving agent's crashed episodes and show its last decisions next to the expert's (issue 26).

For each episode that ends in a crash: how (``crash_into_ahead`` / ``from_behind`` / ``side``), and for each of the
last ``--last`` decisions the agent's action, the expert's label for the same state, the ego speed and set speed, the
gap to the car ahead in the ego lane and its speed, and whether the car it finally hit was among the 4 neighbours
the reader is trained to read (the kinematics).

    python bench/actions/driving_crashes.py --mission overtake --seed 200000 --episodes 100 \\
        --out bench/actions/driving_crashes_overtake.json     # the shipped agent on driving_shipped.json's seeds
    python bench/actions/driving_crashes.py --run RUN ...    # a training run, with its own config.yaml
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from omniplug.envs import make_env
from omniplug.envs.base import Observation
from omniplug.envs.highway import META_ACTIONS
from omniplug.envs.rollout import model_policy

REPO = Path(__file__).resolve().parents[2]
NAMES = [a.lower() for a in META_ACTIONS]


def decision(env, agent: int) -> dict:
    ego = env.ego
    ahead = env.road.neighbour_vehicles(ego, ego.lane_index)[0]
    seen = env.road.close_objects_to(ego, env._env.unwrapped.PERCEPTION_DISTANCE, count=4, see_behind=True,
                                     sort=True, vehicles_only=True)
    return {"agent": NAMES[agent], "expert": NAMES[int(env.expert_action())], "speed": round(float(ego.speed), 1),
            "set_speed": env.set_speed(), "lane": int(ego.lane_index[2]),
            "gap_ahead": None if ahead is None else round(float(ahead.position[0] - ego.position[0]), 1),
            "speed_ahead": None if ahead is None else round(float(ahead.speed), 1), "_seen": [id(v) for v in seen]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", help="a training run folder (config.yaml + weights); default: the shipped agent")
    p.add_argument("--mission", default="overtake", choices=("cruise", "keep_right", "overtake"))
    p.add_argument("--seed", type=int, default=200_000)
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--last", type=int, default=6, help="decisions shown before each crash")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = str(Path(args.run) / "config.yaml") if args.run else str(REPO / "configs" / "driving" / "highway.yaml")
    policy = model_policy(config, [f"one_model.weights={args.run}"] if args.run else [])
    env = make_env("highway", mission=args.mission)
    crashes = []
    try:
        for seed in range(args.seed, args.seed + args.episodes):
            obs, earlier, log = env.reset(seed), [], []
            for _ in range(env.max_steps):
                frames = tuple(earlier[-(policy.history - 1):]) if policy.history > 1 else ()
                action = policy.act([Observation(image=obs.image, instruction=obs.instruction, history=frames)])[0]
                agent = int(np.asarray(action).reshape(-1)[0])
                log.append(decision(env, agent))
                earlier.append(obs.image)
                step = env.step(agent)
                obs = step.observation
                if step.done:
                    break
            metrics = env.episode_metrics()
            if not metrics["crashed"]:
                continue
            hit = [v for v in env.road.vehicles if v is not env.ego and v.crashed]
            hit_id = id(min(hit, key=lambda v: float(np.linalg.norm(v.position - env.ego.position)))) if hit else None
            last = [{**{k: v for k, v in row.items() if k != "_seen"}, "hit_car_read": hit_id in row["_seen"]}
                    for row in log[-args.last:]]
            kind = next(k[len("crash_"):] for k, v in metrics.items() if k.startswith("crash_") and v)
            crashes.append({"seed": seed, "kind": kind, "decisions": len(log), "last": last})
            print(seed, kind, " ".join(f"{r['agent']}/{r['expert']}@{r['gap_ahead']}" for r in last), flush=True)
    finally:
        env.close()
    rows = [r for c in crashes for r in c["last"]]
    summary = {"episodes": args.episodes, "crashes": len(crashes),
               "kinds": {k: sum(c["kind"] == k for c in crashes) for k in sorted({c["kind"] for c in crashes})},
               "last_decisions_agent_is_expert": round(float(np.mean([r["agent"] == r["expert"] for r in rows])), 3) if rows else None,
               "last_decisions_expert_slower_agent_faster": sum(r["expert"] == "slower" and r["agent"] == "faster" for r in rows),
               "last_decisions_hit_car_read": round(float(np.mean([r["hit_car_read"] for r in rows])), 3) if rows else None}
    print(json.dumps(summary))
    if args.out:
        Path(args.out).write_text(json.dumps({"agent": args.run or "shipped", "mission": args.mission, "seed": args.seed,
                                              "summary": summary, "crashes": crashes}, indent=1) + "\n")


if __name__ == "__main__":
    main()

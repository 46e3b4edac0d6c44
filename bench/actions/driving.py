"""Driving closed-loop: a trained agent against highway-env's IDM/MOBIL expert and the observation-blind baseline
(``idle`` at every step: keep the lane and the speed), per mission, on held-out seeds (100000+; demonstrations use
0..N-1). Collision rate, mission success, mean speed, distance, right-lane share; rollout GIFs.

    python bench/actions/driving.py --weights /root/runs/driving/agent --episodes 50   # -> driving.json, driving_*.gif
    python bench/actions/driving.py --agent bc=RUN1 --agent dagger1=RUN2 ...   # several trained runs side by side

``--agent NAME=RUN`` rolls out a training run with the config it saved (``RUN/config.yaml``: its adapter, frame
history and ``reasoning``, the environment options it was trained in), its final weights (``NAME=CONFIG.yaml``: a
config and the weights it names, e.g. the shipped agent); GIFs are written for the last agent named. ``--ensemble
NAME=RUN1,RUN2,...`` rolls out runs that vote at every decision (``EnsemblePolicy``), next to the shipped agent.

Issue 26's goals: collisions <= the expert's + 0.02, mission success >= 0.90 of the expert's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MISSIONS = ("cruise", "keep_right", "overtake")
KEYS = ("success_rate", "crashed", "crash_into_ahead", "crash_from_behind", "crash_side", "mean_speed", "distance",
        "right_lane_share", "lane_changes")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "driving" / "highway.yaml"))
    p.add_argument("--weights", help="the agent's trained weights (default: the config's one_model.weights)")
    p.add_argument("--agent", action="append", default=[], metavar="NAME=RUN",
                   help="a training run to compare, read with its own config.yaml (repeatable; replaces --weights)")
    p.add_argument("--decisions-per-second", type=int, default=1, choices=(1, 2, 5),
                   help="meta-action decisions a second (the environment's decisions_per_second; GIFs are named "
                        "driving_<N>hz_<mission>.gif when not 1)")
    p.add_argument("--gif-dir", default=str(Path(__file__).parent), help="where the GIFs go")
    p.add_argument("--ensemble", action="append", default=[], metavar="NAME=RUN1,RUN2,...",
                   help="training runs that vote at every decision (EnsemblePolicy: majority, ties to the first run)")
    p.add_argument("overrides", nargs="*", help="config overrides, e.g. one_model.decoder=act_words")
    p.add_argument("--episodes", type=int, default=50, help="per mission and policy")
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--out", default=str(Path(__file__).with_name("driving.json")))
    p.add_argument("--threads", type=int, default=2, help="torch threads per process")
    p.add_argument("--jobs", type=int, default=1, help="missions evaluated side by side in processes (up to 3)")
    p.add_argument("--actions", choices=("meta", "continuous"), default="meta",
                   help="the environment's action space (continuous: the blind baseline is zero acceleration and "
                        "steering; GIFs are named driving_continuous_<mission>.gif)")
    args = p.parse_args(argv)

    from omniplug.eval.bench_record import record_header

    overrides = list(args.overrides) + ([f"one_model.weights={args.weights}"] if args.weights else [])
    agents = {"agent": (args.config, overrides)}
    if args.agent:
        agents = {}
        for item in args.agent:
            name, sep, run = item.partition("=")
            if sep and run.endswith(".yaml") and Path(run).is_file():  # a config with its own weights (the shipped one)
                agents[name] = (run, list(args.overrides))
                continue
            if not sep or not (Path(run) / "config.yaml").is_file():
                p.error(f"--agent {item!r}: give NAME=RUN, RUN a training run folder with config.yaml (or NAME=CONFIG.yaml)")
            agents[name] = (str(Path(run) / "config.yaml"), [*args.overrides, f"one_model.weights={run}"])
    for item in args.ensemble:
        name, sep, runs = item.partition("=")
        runs = [r for r in runs.split(",") if r]
        if not sep or len(runs) < 2 or not all((Path(r) / "config.yaml").is_file() for r in runs):
            p.error(f"--ensemble {item!r}: give NAME=RUN1,RUN2,..., at least two training run folders with config.yaml")
        agents[name] = [(str(Path(r) / "config.yaml"), [*args.overrides, f"one_model.weights={r}"]) for r in runs]
    result = {**record_header(repo=REPO, config=args.config, argv=argv), "actions": args.actions, "episodes": args.episodes,
              "seed": args.seed, "decisions_per_second": args.decisions_per_second, "missions": {},
              "agents": {name: ([c for c, _ in spec] if isinstance(spec, list) else spec[0]) for name, spec in agents.items()}}
    one = partial(_mission, agents=agents, episodes=args.episodes, seed=args.seed, threads=args.threads,
                  actions=args.actions, hz=args.decisions_per_second, gif_dir=Path(args.gif_dir))
    if args.jobs <= 1:
        rows = [one(m) for m in MISSIONS]
    else:
        with ProcessPoolExecutor(min(args.jobs, len(MISSIONS))) as pool:
            rows = list(pool.map(one, MISSIONS))
    result["missions"] = dict(zip(MISSIONS, rows))
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _mission(mission: str, *, agents: dict, episodes: int, seed: int, threads: int, actions: str = "meta",
             hz: int = 1, gif_dir: Path) -> dict:
    """Expert, the blind baseline (`idle`; continuous: `zero`) and every agent on one mission; the last agent's
    first 4 episodes -> GIF."""
    import torch

    from omniplug.envs.base import make_env
    from omniplug.envs.rollout import ConstantPolicy, EnsemblePolicy, evaluate, evaluate_config, model_policy

    torch.set_num_threads(threads)
    here, options = gif_dir, {"mission": mission, "actions": actions, **({"decisions_per_second": hz} if hz != 1 else {})}
    space = make_env("highway", duration=1, actions=actions).action_space
    blind, blind_name = (ConstantPolicy("idle", space), "idle") if actions == "meta" else \
        (ConstantPolicy([0.0, 0.0], space), "zero")
    rows = {"expert": evaluate("expert", "highway", episodes=episodes, seed=seed, env_options=options),
            blind_name: evaluate(blind, "highway", episodes=episodes, seed=seed, env_options=options)}
    stem = ("driving" if actions == "meta" else "driving_continuous") + (f"_{hz}hz" if hz != 1 else "")
    for name, spec in agents.items():
        if isinstance(spec, list):  # an ensemble: the runs vote
            policy = EnsemblePolicy([model_policy(config, agent_overrides) for config, agent_overrides in spec])
            rows[name] = evaluate(policy, "highway", episodes=episodes, seed=seed,
                                  env_options=_agent_options(*spec[0], options),
                                  gif=here / f"{stem}_{mission}" / "rollouts.gif")
            continue
        config, agent_overrides = spec
        rows[name] = evaluate_config(config, agent_overrides, env="highway", episodes=episodes, seed=seed,
                                     env_options=_agent_options(config, agent_overrides, options),
                                     out_dir=here / f"{stem}_{mission}")
    gif = here / f"{stem}_{mission}" / "rollouts.gif"
    if gif.is_file():
        gif.replace(here / f"{stem}_{mission}.gif")
        shutil.rmtree(gif.parent, ignore_errors=True)
    table = {name: {k: r.summary().get(k) for k in KEYS} for name, r in rows.items()}
    print(mission, json.dumps(table), flush=True)
    return table


def _agent_options(config: str, overrides: list[str], options: dict) -> dict:
    """The environment options the agent was trained in (its config's env.options: a view, a state, brake_room) with
    the mission's on top: the same roads, seed for seed, as the expert's and the blind baseline's."""
    from omniplug.config import load_config
    from omniplug.envs.base import env_for

    return env_for(load_config(config, overrides), "highway", options)[1]


if __name__ == "__main__":
    sys.exit(main())

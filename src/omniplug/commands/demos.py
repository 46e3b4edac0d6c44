"""``omniplug demos``: collect expert demonstrations, summarise them, roll a trained policy out.

    omniplug demos collect --env babyai-gotolocal --episodes 200 --out data/gotolocal
    omniplug demos info data/gotolocal
    omniplug demos parser --data data/gotolocal --out configs/babyai/parser   # the `cells` encoder's parser
    omniplug demos reader --data data/reacher --out configs/reacher/reader    # the `state` encoder's reader
    omniplug demos rollout -c configs/babyai.yaml --env babyai-gotolocal --episodes 50 --out out/eval
"""

from __future__ import annotations

import argparse
import json

from omniplug.cli import command
from omniplug.envs.base import env_for, parse_options


def _args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="demos_command", required=True)
    c = sub.add_parser("collect", help="run an environment's expert and write demonstrations")
    c.add_argument("--env", help="environment name (e.g. babyai-gotolocal, reacher); with -c, default: the config's "
                                 "env.name, whose env.options the --option values go on top of")
    c.add_argument("--episodes", type=int, required=True)
    c.add_argument("--out", required=True, help="an empty directory to write the episodes into")
    c.add_argument("--seed", type=int, default=0, help="first episode seed (episodes use seed, seed+1, ...)")
    c.add_argument("--option", action="append", default=[], help="environment option key=value (repeatable)")
    c.add_argument("-c", "--config", help="DAgger: this model drives and the expert labels every step (the states "
                                          "the policy's own mistakes reach); give its weights as an override")
    c.add_argument("overrides", nargs="*", help="with -c: config key=value overrides, e.g. one_model.weights=RUN")
    c.add_argument("--constant", metavar="ACTION", help="a constant action drives instead of a model (a name/index, or D "
                                                         "comma floats), the expert labelling every step: with "
                                                         "--expert-share, the states a learner drifts into (highway: "
                                                         "`faster` runs up to the car ahead)")
    c.add_argument("--expert-share", type=float, default=0.0,
                   help="with -c or --constant: share of the steps the expert drives instead (DAgger's beta; default 0)")
    i = sub.add_parser("info", help="summarise a demonstrations directory")
    i.add_argument("dir")
    pa = sub.add_parser("parser", help="train the `cells` encoder's parser on demonstrations with symbolic grids")
    pa.add_argument("--data", required=True, help="demonstrations written with grids (BabyAI: --option view=agent)")
    pa.add_argument("--out", required=True, help="directory for parser_config.json + parser.safetensors")
    pa.add_argument("--steps", type=int, default=1000)
    pa.add_argument("--batch-size", type=int, default=64)
    pa.add_argument("--val-episodes", type=int, default=100, help="episodes at the end of the index held out")
    pa.add_argument("--max-episodes", type=int, default=4000, help="training episodes read (frames held in memory)")
    pa.add_argument("--seed", type=int, default=0)
    rd = sub.add_parser("reader", help="train the `state` encoder's reader on demonstrations with states")
    rd.add_argument("--data", required=True, action="append",
                    help="demonstrations whose episodes store states (e.g. reacher); repeat it to train on several "
                         "folders (the expert's and the DAgger rounds')")
    rd.add_argument("--out", required=True, help="directory for reader_config.json + reader.safetensors")
    rd.add_argument("--steps", type=int, default=3000)
    rd.add_argument("--batch-size", type=int, default=64)
    rd.add_argument("--val-episodes", type=int, default=20, help="episodes at the end of the index held out")
    rd.add_argument("--seed", type=int, default=0)
    rd.add_argument("--standardise-like", default=None, metavar="READER_DIR",
                    help="keep this reader's state mean / std, so the new reader can replace it under an agent "
                         "trained on it")
    r = sub.add_parser("rollout", help="closed-loop evaluation of a model (or the expert) on an environment")
    r.add_argument("-c", "--config", help="model config (omit with --expert)")
    r.add_argument("overrides", nargs="*", help="config key=value overrides, e.g. one_model.weights=out/run/final")
    r.add_argument("--env", help="environment name; with -c, default: the config's env (env.name, env.options)")
    r.add_argument("--episodes", type=int, default=20)
    r.add_argument("--seed", type=int, default=100_000, help="first evaluation seed (keep apart from training seeds)")
    r.add_argument("--num-envs", type=int, default=8, help="environments stepped together (one model call per step)")
    r.add_argument("--execute", type=int, default=None, help="actions of each predicted chunk to play (default all)")
    r.add_argument("--task", default="act")
    r.add_argument("--out", required=True, help="directory for metrics.json and rollouts.gif")
    r.add_argument("--expert", action="store_true", help="roll the environment's expert out instead of a model")
    r.add_argument("--constant", metavar="ACTION", help="roll out one action at every step instead of a model (the "
                                                         "observation-blind baseline): a name/index, or D comma floats")
    r.add_argument("--option", action="append", default=[], help="environment option key=value (repeatable)")


@command("demos", "expert demonstrations and closed-loop rollouts in simulators")(_args)
def _run(args: argparse.Namespace) -> int:
    if args.demos_command == "collect":
        from omniplug.envs.collect import collect_demos

        policy, env, options = None, args.env, parse_options(args.option)
        if args.config:
            from omniplug.config import load_config
            from omniplug.envs.rollout import model_policy

            config = load_config(args.config, args.overrides)
            env, options = env_for(config, env, options)
            policy = model_policy(config)
            if args.constant:
                raise ValueError("give a model config (-c) or a constant action (--constant), not both")
        elif args.overrides:
            raise ValueError(f"overrides {args.overrides} need a model config (-c) to apply to")
        elif args.constant:
            from omniplug.envs.base import make_env
            from omniplug.envs.rollout import ConstantPolicy

            if env is None:
                raise ValueError("name the environment the constant action drives in: --env (e.g. highway)")
            probe = make_env(env, **options)
            try:
                policy = ConstantPolicy(args.constant, probe.action_space)
            finally:
                probe.close()
        elif args.expert_share:
            raise ValueError("--expert-share needs a driver besides the expert: a model config (-c) or --constant")
        elif env is None:
            raise ValueError("name the environment whose expert to record: --env (e.g. highway, babyai-gotolocal)")
        report = collect_demos(env, episodes=args.episodes, out=args.out, seed=args.seed, env_options=options,
                               policy=policy, expert_share=args.expert_share)
        who = "expert" if policy is None else "policy"
        agreement = "" if report.expert_agreement is None else f"; the policy chose the expert's action on " \
                                                                 f"{report.expert_agreement:.3f} of the steps"
        print(f"wrote {report.episodes} episodes ({report.steps} steps) to {report.out}; {who} success "
              f"{report.success_rate:.3f}{agreement}; {report.seconds:.1f}s")
        return 0
    if args.demos_command == "info":
        from omniplug.actions.episodes import read_index, read_meta

        meta, records = read_meta(args.dir), read_index(args.dir)
        summary = {"env": meta.get("env"), "options": meta.get("options", {}), "action_space": meta["action_space"], "episodes": len(records),
                   "steps": sum(r.length for r in records),
                   "success_rate": sum(r.success for r in records) / max(len(records), 1),
                   "seeds": [records[0].seed, records[-1].seed] if records else []}
        print(json.dumps(summary, indent=2))
        return 0
    if args.demos_command == "parser":
        from omniplug.actions.cell_parser import train_cell_parser

        report = train_cell_parser(args.data, args.out, steps=args.steps, batch_size=args.batch_size,
                                   val_episodes=args.val_episodes, max_episodes=args.max_episodes, seed=args.seed)
        print(f"cell parser: {report.frames} frames, {report.steps} steps, {report.seconds:.1f}s; held-out cell "
              f"accuracy {report.cell_accuracy:.4f} "
              f"({', '.join(f'{k} {v:.4f}' for k, v in report.attribute_accuracy.items())}); wrote {report.out}")
        return 0
    if args.demos_command == "reader":
        from omniplug.actions.state_reader import train_state_reader

        report = train_state_reader(args.data, args.out, steps=args.steps, batch_size=args.batch_size,
                                    val_episodes=args.val_episodes, seed=args.seed,
                                    standardise_like=args.standardise_like)
        errors = ", ".join(f"{m:.4f} (mean: {b:.4f})" for m, b in zip(report.mae, report.baseline_mae))
        print(f"state reader: {report.frames} frames, {report.steps} steps, {report.seconds:.1f}s; held-out mean "
              f"absolute error per dimension: {errors}; wrote {report.out}")
        return 0
    return _rollout(args)


def _rollout(args: argparse.Namespace) -> int:
    from pathlib import Path

    from omniplug.envs.rollout import evaluate, evaluate_config

    out = Path(args.out)
    options = parse_options(args.option)
    if args.env is None and (args.expert or args.constant is not None or not args.config):
        raise ValueError("name the environment: --env (e.g. highway); only a model config (-c) records its own")
    if args.expert:
        report = evaluate("expert", args.env, episodes=args.episodes, seed=args.seed, num_envs=args.num_envs,
                          env_options=options, gif=out / "rollouts.gif")
    elif args.constant is not None:
        from omniplug.envs.base import make_env
        from omniplug.envs.rollout import ConstantPolicy

        probe = make_env(args.env, **options)
        try:
            policy = ConstantPolicy(args.constant, probe.action_space)
        finally:
            probe.close()
        report = evaluate(policy, args.env, episodes=args.episodes, seed=args.seed, num_envs=args.num_envs,
                          env_options=options, gif=out / "rollouts.gif")
    else:
        if not args.config:
            raise ValueError("give a model config with -c (or --expert to roll the expert out)")
        from omniplug.config import load_config

        config = load_config(args.config, args.overrides)
        env, options = env_for(config, args.env, options)
        report = evaluate_config(config, env=env, episodes=args.episodes, seed=args.seed,
                                 num_envs=args.num_envs, execute=args.execute, task=args.task, env_options=options,
                                 out_dir=out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(report.to_json(), indent=2))
    print(json.dumps(report.summary(), indent=2))
    return 0

"""``omniplug eval -c CONFIG [overrides] [--json] [--data DIR]``: gIoU / cIoU per dataset and overall.

Evaluates the ``data.eval`` datasets of the config, or the segmentation set in ``--data DIR``
(its format found from its files: ``refs.json`` -> refcoco, ``classes.json`` -> semantic_seg,
image + same-named ``.json`` -> reason_seg, ``instances.json`` alone -> coco_detection; or say
``--data-type``). See ``omniplug.eval.segmentation`` for the metrics and the two modes. Box datasets
(``coco_detection``; ``refcoco`` with ``--data-type refcoco_box`` or ``target: box``) are scored from the
model's answers: COCO mAP / AP50, or referring box accuracy at IoU 0.5 (``omniplug.eval.detection``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from omniplug.cli import command
from omniplug.config.schema import ConfigError


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file (one_model.weights picks trained weights)")
    p.add_argument("overrides", nargs="*", help="key=value overrides")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--data", metavar="DIR", help="evaluate this dataset directory instead of data.eval (a world split "
                   "written by `omniplug world generate` gets the full world table)")
    p.add_argument("--data-type", choices=("refcoco", "reason_seg", "semantic_seg", "coco_detection", "refcoco_box"), help="format of --data")
    p.add_argument("--split", default="val", help="split for a refcoco-layout --data (default: val)")
    p.add_argument("--mode", choices=("teacher_forced", "generated", "both"), default="teacher_forced",
                   help="teacher_forced: masks of the reference answer's <seg> (LISA's eval); generated: of the model's "
                        "own greedy answer; both: {mode: metrics}")
    p.add_argument("--max-samples", type=int, default=None, help="per dataset (default: trainer.eval_max_samples)")
    p.add_argument("--batch-size", type=int, default=None, help="default: trainer.batch_size_eval")
    p.add_argument("--max-new-tokens", type=int, default=32, help="generated mode only")
    p.add_argument("--out", metavar="FILE", help="also write the JSON metrics to FILE")
    p.add_argument("--device", default=None)
    p.add_argument("--world", metavar="DIR", help="every task figure on a procedural-world split written by "
                   "`omniplug world generate` (caption F1, VQA, referring cIoU, ..., generation accuracy)")
    p.add_argument("--holdout", metavar="DIR", help="with --world: the same figures on a hold-out split")
    p.add_argument("--tasks", metavar="LIST", help="world splits: comma-separated tasks to score (default: every task "
                   "the model's decoders support)")
    p.add_argument("--clip-dir", metavar="DIR", help="generation datasets: also CLIP score with this CLIP checkpoint")
    p.add_argument("--env", nargs="?", const="", metavar="ENV",
                   help="closed-loop evaluation instead: success rate, mean return, episode length and rollouts.gif "
                        "(docs/actions.md); alone, in the environment the config records (env.name, env.options), "
                        "or name one (e.g. babyai-gotolocal)")
    p.add_argument("--episodes", type=int, default=50, help="--env: episodes, seeds --seed, --seed+1, ...")
    p.add_argument("--seed", type=int, default=100_000, help="--env: first seed (keep apart from the demonstrations')")
    p.add_argument("--num-envs", type=int, default=8, help="--env: environments stepped together (one model call)")
    p.add_argument("--mission", metavar="TEXT",
                   help="--env: roll out episodes with this mission only, e.g. \"go to the red ball\" or \"keep to "
                        "the right lane\" (the first --episodes seeds from --seed whose mission it is; rollouts.gif "
                        "shows up to 4)")
    p.add_argument("--env-option", action="append", default=[], metavar="KEY=VALUE",
                   help="--env: environment option, e.g. view=agent (repeatable; on top of the config's env.options)")


def dataset_from_dir(path: str | Path, *, data_type: str | None = None, split: str = "val"):
    """A segmentation dataset for a directory, its format given or found from its files."""
    from omniplug.build import build_entry
    from omniplug.config import EntryConfig
    from omniplug.registry import load_builtin_plugins

    load_builtin_plugins()
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {root}: not a directory")
    if data_type is None:
        if (root / "refs.json").is_file() and (root / "instances.json").is_file():
            data_type = "refcoco"
        elif (root / "classes.json").is_file():
            data_type = "semantic_seg"
        elif any(p.suffix == ".json" and any(p.with_suffix(s).is_file() for s in (".jpg", ".jpeg", ".png"))
                 for p in root.iterdir()):
            data_type = "reason_seg"
        elif (root / "instances.json").is_file():
            data_type = "coco_detection"
        else:
            raise ValueError(f"--data {root}: cannot tell the format (expected refs.json + instances.json, classes.json "
                             f"+ images/ + labels/, images with same-named .json, or instances.json); pass --data-type")
    kwargs = {"data_dir": str(root)}
    if data_type == "refcoco_box":
        data_type, kwargs["target"], kwargs["seg_token"], kwargs["task"] = "refcoco", "box", "<det>", "det"
    if data_type == "refcoco":
        kwargs["split"] = split
    if data_type == "semantic_seg":
        kwargs["classes_per_sample"] = None  # every present class
    return build_entry(EntryConfig(section="dataset", name=root.name, type=data_type, params=kwargs, source="--data"))


@command("eval", "evaluate segmentation (gIoU / cIoU) on the config's eval datasets or a directory")(_args)
def _run(args: argparse.Namespace) -> int:
    from omniplug.build import build_entry, build_model
    from omniplug.config import load_config
    from omniplug.eval.segmentation import evaluate_segmentation

    if args.mission and args.env is None:
        raise ValueError("--mission picks episodes of an environment: give --env too (alone: the config's own)")
    cfg = load_config(args.config, args.overrides)
    if args.env is not None:
        return _run_env(args, cfg)
    if args.data and not args.world:
        from omniplug.eval.video import evaluate_clips, is_clip_split, video_task

        if is_clip_split(args.data):  # clips of the moving world: generate each prompt's clip and read it back
            model = build_model(cfg)
            if args.device:
                model.to(args.device)
            report = {}
            n = args.max_samples or 100
            if video_task(model) is not None:  # text -> clip: generate every prompt's clip, read it back
                report[f"{Path(args.data).name}/generation"] = evaluate_clips(
                    model, args.data, n=n, batch_size=args.batch_size or cfg.trainer.batch_size_eval)
            masks = [d for d in model.decoders.values() if getattr(d, "output_kind", "") == "masks"]
            if masks:
                from omniplug.eval.video import segment_over_time
                from omniplug.infer.pipeline import Pipeline

                pipe = Pipeline(model)
                report[f"{Path(args.data).name}/segmentation"] = segment_over_time(pipe, args.data, n=n)
                if any(d.reads_every_image for d in masks):  # the clip in one request, a mask per frame
                    report[f"{Path(args.data).name}/segmentation_one_answer"] = segment_over_time(
                        pipe, args.data, n=n, one_answer=True, frames=4)
            from omniplug.eval.video import answer_clip_questions

            report[f"{Path(args.data).name}/questions"] = answer_clip_questions(
                model, args.data, n=n, batch_size=args.batch_size or cfg.trainer.batch_size_eval)
            if args.out:
                Path(args.out).expanduser().write_text(json.dumps(report, indent=2))
            print(json.dumps(report, indent=2) if args.json else "\n".join(
                f"{name}: " + ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items())
                for name, row in report.items()))
            return 0
    if args.data and not args.world and is_world_split(args.data):
        args.world = args.data
    if not (args.world or args.data) and cfg.data.world_eval:
        args.world, args.holdout = world_eval_splits(cfg.data.world_eval, holdout=args.holdout)
        if args.max_samples is None:
            args.max_samples = int(cfg.data.world_eval.get("samples", 100))
    if args.world:
        return _run_world(args, cfg)
    if args.data:
        datasets = {Path(args.data).name: dataset_from_dir(args.data, data_type=args.data_type, split=args.split)}
    else:
        if not cfg.data.eval:
            raise ConfigError(f"{cfg.source}: data.eval lists no dataset; add dataset entries there or pass --data DIR")
        datasets = {name: build_entry(cfg.entry("dataset", name, where="data.eval")) for name in cfg.data.eval}
    model = build_model(cfg)
    if args.device:
        model.to(args.device)
    options = dict(batch_size=args.batch_size or cfg.trainer.batch_size_eval,
                   max_samples=args.max_samples if args.max_samples is not None else cfg.trainer.eval_max_samples,
                   max_length=cfg.data.max_length, max_new_tokens=args.max_new_tokens)
    from omniplug.eval.world import box_protocol, evaluate_boxes

    gen_sets = {n: d for n, d in datasets.items() if not args.data and _is_generation(cfg, n)}
    box_sets = {n: d for n, d in datasets.items() if box_protocol(d)}
    seg_sets = {n: d for n, d in datasets.items() if n not in gen_sets and n not in box_sets}
    modes = ["teacher_forced", "generated"] if args.mode == "both" else [args.mode]
    results = {mode: evaluate_segmentation(model, seg_sets, mode=mode, **options) for mode in modes} if seg_sets else {}
    report = dict(results if args.mode == "both" else results.get(args.mode, {}))
    if gen_sets:
        from omniplug.eval.generation import evaluate_generation

        gen_task = next(t for t, d in model.decoders.items() if getattr(d, "output_kind", "") == "images")
        for name, dataset in gen_sets.items():
            report[name] = evaluate_generation(model, dataset, task=gen_task, batch_size=options["batch_size"],
                                               max_samples=options["max_samples"], max_length=cfg.data.max_length,
                                               clip_dir=args.clip_dir)
    for name, dataset in box_sets.items():
        report[name] = evaluate_boxes(model, dataset, n=options["max_samples"] or len(dataset),
                                      batch_size=options["batch_size"])
    if args.out:
        Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).expanduser().write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for mode, table in results.items():
        print(f"{mode}:")
        print(f"  {'dataset':<24} {'gIoU':>7} {'cIoU':>7} {'n':>6}")
        for name, m in table.items():
            print(f"  {name:<24} {m['giou']:7.4f} {m['ciou']:7.4f} {m['n']:6d}")
    for name in [*gen_sets, *box_sets]:
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in report[name].items() if not k.startswith("ap50_")))
    return 0


def _is_generation(cfg, name: str) -> bool:
    entry = cfg.entry("dataset", name, where="data.eval")
    return entry.type in ("generation_pairs", "editing_triples") or (
        entry.type == "world" and entry.params.get("task") in ("generation", "editing"))


def is_world_split(path: str | Path) -> bool:
    """A folder written by ``omniplug world generate`` (its meta.json names the world's config)."""
    meta = Path(path).expanduser() / "meta.json"
    if not meta.is_file():
        return False
    try:
        return "holdout" in json.loads(meta.read_text()).get("config", {})
    except (json.JSONDecodeError, AttributeError):
        return False


_WORLD_EVAL_KEYS = {"root", "n", "seed", "holdout_seed", "samples", "size"}


def world_eval_splits(spec: dict, *, holdout: str | None = None) -> tuple[str, str]:
    """``data.world_eval`` -> (val dir, holdout dir), generating them on first use."""
    from omniplug.data.world_tasks import ensure_split

    unknown = set(spec) - _WORLD_EVAL_KEYS
    if unknown or "root" not in spec:
        raise ConfigError(f"data.world_eval: needs 'root' and takes {sorted(_WORLD_EVAL_KEYS)}; got {sorted(spec)}")
    root, n, size = Path(spec["root"]), int(spec.get("n", 200)), int(spec.get("size", 64))
    val = ensure_split(root=root / "val", split="val", n=n, seed=int(spec.get("seed", 101)), size=size)
    if holdout is None:
        holdout = str(ensure_split(root=root / "holdout", split="holdout", n=n, seed=int(spec.get("holdout_seed", 102)),
                                   size=size))
    return str(val), holdout


def _run_world(args: argparse.Namespace, cfg) -> int:
    """All task figures of a model on world splits (omniplug.eval.world)."""
    import sys

    from omniplug.build import build_model
    from omniplug.eval.world import evaluate_world, format_world_table

    model = build_model(cfg)
    if args.device:
        model.to(args.device)
    n = args.max_samples or 100
    batch = args.batch_size or cfg.trainer.batch_size_eval
    say = (lambda m: print(m, file=sys.stderr)) if not args.json else None
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()] if args.tasks else None
    report = evaluate_world(model, args.world, n=n, batch_size=batch, tasks=tasks, progress=say)
    if args.holdout:
        report["holdout"] = evaluate_world(model, args.holdout, n=n, batch_size=batch, tasks=tasks, progress=say)
    if args.out:
        Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).expanduser().write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2) if args.json else format_world_table(report))
    return 0


def _run_env(args: argparse.Namespace, cfg) -> int:
    """Closed-loop rollouts of the config's action decoder (see ``omniplug.envs.rollout``)."""
    from omniplug.envs.base import env_for, parse_options
    from omniplug.envs.rollout import evaluate_config, mission_seeds

    out_dir = (Path(args.out).expanduser().parent if args.out
               else Path(cfg.trainer.output_dir) / f"eval_{args.env or cfg.env.name}")
    env, options = env_for(cfg, args.env, parse_options(args.env_option))
    seeds = (mission_seeds(env, args.mission, count=args.episodes, seed=args.seed, env_options=options)
             if args.mission else None)
    report = evaluate_config(cfg, env=env, episodes=args.episodes, seed=args.seed, num_envs=args.num_envs,
                             env_options=options, out_dir=out_dir, seeds=seeds)
    if args.out:
        Path(args.out).expanduser().parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).expanduser().write_text(json.dumps(report.to_json(), indent=2))
    print(json.dumps(report.summary(), indent=2))
    return 0

"""``omniplug world ...`` commands.

The main CLI calls :func:`add_arguments` on its ``world`` sub-parser and :func:`run` with the
parsed namespace. Standalone: ``python -m omniplug.data.world.cli generate --out DIR --n N``.
"""

from __future__ import annotations

import argparse
import sys

from .vocab import DEFAULT_HOLDOUT, SPLITS


def _split_arguments(p: argparse.ArgumentParser, item: str, split_help: str) -> None:
    """--out, --n, --seed, --split, --size: what every split writer takes."""
    p.add_argument("--out", required=True, help="output directory (must be empty or absent)")
    p.add_argument("--n", type=int, required=True, help=f"number of {item}s")
    p.add_argument("--seed", type=int, default=0, help=f"master seed ({item} i uses (seed, split, i))")
    p.add_argument("--split", choices=SPLITS, default="train", help=split_help)
    p.add_argument("--size", type=int, default=64, help="image side in pixels (>= 48)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="world_command", metavar="{generate,clips,analyse,examples}", required=True)
    gen = sub.add_parser("generate", help="write a split of the procedural world in standard formats")
    _split_arguments(gen, "scene", "train/val/test never contain hold-out combinations; holdout always does")
    gen.add_argument("--holdout", default=", ".join(f"{c} {s}" for c, s in DEFAULT_HOLDOUT),
                     help="comma-separated '<colour> <shape>' combinations kept out of train/val/test")
    gen.add_argument("--min-objects", type=int, default=None, help="fewest objects per scene (default 2)")
    gen.add_argument("--max-objects", type=int, default=None, help="most objects per scene (default 6)")
    gen.add_argument("--overwrite", action="store_true", help="replace an existing split in --out")
    gen.add_argument("--no-progress", action="store_true", help="no progress bar")
    gen.add_argument("--workers", type=int, default=None,
                     help="processes rendering scenes (default: the usable cores, at most 8; 1 below 500 scenes); "
                          "the same files for any number")
    clips = sub.add_parser("clips", help="write a split of the moving world: clips with per-frame masks, boxes, "
                                          "centres, captions and questions")
    _split_arguments(clips, "clip", "train/val/test never move a held-out colour-shape that way; holdout always does")
    clips.add_argument("--frames", type=int, default=8, help="frames per clip (>= 2)")
    clips.add_argument("--overwrite", action="store_true", help="replace an existing clip split in --out")
    clips.add_argument("--examples", default=None, metavar="STEM",
                       help="instead of a split, draw --n clips to STEM.png (contact sheet) and STEM.gif (playing)")
    acc = sub.add_parser("analyse", help="measure the image analyser on freshly generated scenes")
    acc.add_argument("--n", type=int, default=500)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--split", choices=SPLITS, default="test")
    acc.add_argument("--size", type=int, default=64)
    acc.add_argument("--perturb", default="none", help="degrade renders first: none, noise10, noise25, blur0.7, "
                                                        "jpeg90, jpeg75, down-up2x")
    ex = sub.add_parser("examples", help="draw a grid of example scenes (image | panoptic | caption) to a PNG")
    ex.add_argument("--out", required=True, help="PNG file to write, e.g. docs/world_examples.png")
    ex.add_argument("--n", type=int, default=16)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--split", choices=SPLITS, default="train")
    ex.add_argument("--size", type=int, default=64)


def _config(args: argparse.Namespace):  # -> WorldConfig
    from .scene import WorldConfig
    from .vocab import parse_holdout
    kwargs = {"size": args.size}
    if getattr(args, "holdout", None) is not None:
        kwargs["holdout"] = parse_holdout(args.holdout)
    if getattr(args, "min_objects", None) is not None:
        kwargs["min_objects"] = args.min_objects
    if getattr(args, "max_objects", None) is not None:
        kwargs["max_objects"] = args.max_objects
    return WorldConfig(**kwargs)


def run(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
        if args.world_command == "generate":
            from .writers import default_workers, write_split
            summary = write_split(out_dir=args.out, n=args.n, seed=args.seed, split=args.split, config=config,
                                  overwrite=args.overwrite, progress=not args.no_progress,
                                  workers=default_workers(args.n) if args.workers is None else args.workers)
            counts = ", ".join(f"{k} {v}" for k, v in summary.counts.items())
            print(f"wrote {summary.n} {summary.split} scenes to {summary.out_dir} in {summary.seconds:.1f}s "
                  f"({summary.scenes_per_second:.0f} scenes/s; {counts})")
            return 0
        if args.world_command == "clips" and args.examples:
            from .clips import write_clip_examples
            png, gif = write_clip_examples(args.examples, n=args.n, seed=args.seed, split=args.split, config=config)
            print(f"wrote {png} and {gif}")
            return 0
        if args.world_command == "clips":
            from .clips import write_clips
            summary = write_clips(out_dir=args.out, n=args.n, seed=args.seed, split=args.split, frames=args.frames,
                                  config=config, overwrite=args.overwrite)
            print(f"wrote {summary.n} {summary.split} clips of {summary.frames} frames to {summary.out_dir} in "
                  f"{summary.seconds:.1f}s")
            return 0
        if args.world_command == "analyse":
            from .analyser import measure_accuracy
            from .scene import sample_scene
            scenes = [sample_scene(config=config, seed=args.seed, split=args.split, index=i) for i in range(args.n)]
            print(measure_accuracy(scenes, perturbation=args.perturb, seed=args.seed).summary())
            return 0
        if args.world_command == "examples":
            from .examples import write_example_grid
            path = write_example_grid(args.out, n=args.n, seed=args.seed, split=args.split, config=config)
            print(f"wrote {path}")
            return 0
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise ValueError(f"unknown world command {args.world_command!r}; available: generate, clips, analyse, examples")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m omniplug.data.world.cli",
                                     description="The omniplug procedural multi-task world.")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

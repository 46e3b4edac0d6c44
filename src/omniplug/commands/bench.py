"""``omniplug bench infer [-c CONFIG] [--quick] [--json] [--out FILE]``: inference speed ratios measured side by
side in one process (continuous batching vs sequential, three questions of one image vs one, omniplug vs raw
transformers, int8 vs fp32); see ``omniplug.eval.infer_bench``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from omniplug.cli import command

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "configs" / "default" / "omni_tiny.yaml"


def _bench_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=["infer"], help="what to benchmark")
    p.add_argument("-c", "--config", default=str(DEFAULT_CONFIG), help="model config (default: the bundled model)")
    p.add_argument("--quick", action="store_true", help="fewer requests, one round per side: under a minute")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.add_argument("--out", default=None, help="also write the record (JSON) here")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (recorded)")
    p.add_argument("--world", default="data/world/eval_val",
                   help="world val split (written with n=200, seed=101 when missing)")
    p.add_argument("--no-larger", action="store_true",
                   help="skip the larger random Llama (full run only: 1024 hidden, 12 layers)")


@command("bench", "measure inference speed ratios: batching, one image many questions, framework overhead, int8")(
    _bench_args)
def _bench(args: argparse.Namespace) -> int:
    from omniplug.eval import infer_bench

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    if not Path(args.config).is_file():
        raise FileNotFoundError(f"config not found: {args.config}")
    say = (lambda msg: print(f"[bench] {msg}", file=sys.stderr, flush=True))
    def partial(record: dict) -> None:
        if args.out:
            Path(args.out).write_text(infer_bench.dumps({"partial": True, **record}) + "\n")

    result = infer_bench.run(args.config, quick=args.quick, world=args.world, threads=args.threads,
                             larger=not args.no_larger, progress=say, partial=partial)
    from omniplug.eval.bench_record import record_header

    # the headline ratios at the top level too: `omniplug bench infer --quick --json | jq .batch8_speedup`
    record = {**record_header(repo=DEFAULT_CONFIG.parents[2], config=args.config, argv=[]), **result["headline"],
              **result}
    record["command"] = "omniplug " + " ".join(["bench", "infer"] + (["--quick"] if args.quick else [])
                                                + ([f"--threads {args.threads}"] if args.threads != 2 else [])
                                                + ([f"-c {args.config}"] if args.config != str(DEFAULT_CONFIG) else []))
    text = infer_bench.dumps(record)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text if args.json else "\n".join(infer_bench.summary_lines(result)))
    return 0

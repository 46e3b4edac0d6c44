"""VQA accuracy by question type: which questions the default model answers and which it does not.

    python bench/default/vqa_types.py [--config configs/default/omni_tiny.yaml] [--data data/world/eval/val]
        [--n 200] [--out FILE] [overrides ...]

The world asks five kinds of short question (colour of a shape, shape of a colour, left/right relations,
small or large, counts and existence); `omniplug eval` reports one exact-match accuracy over all of them. This
splits the same first ``--n`` questions (the ones eval scores) by kind, with the most frequent wrong answers
per kind and the accuracy of always giving the kind's most frequent true answer (the prior a model gets for
free), so a figure can be read as seeing or as guessing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from collections import Counter, defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from omniplug.build import build_model  # noqa: E402
from omniplug.config import load_config  # noqa: E402
from omniplug.eval.world import _answer, _batches, _conversation_pairs, _norm, _text_samples  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
KINDS = (("colour", r"^what colou?r"), ("shape", r"^what shape"), ("relation", r"^is the .* (left|right|above|below)"),
         ("size", r"small or large"), ("count", r"^how many"), ("existence", r"^is there|^are there"))


def kind_of(question: str) -> str:
    q = question.lower()
    return next((name for name, pattern in KINDS if re.search(pattern, q)), "other")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "default" / "omni_tiny.yaml"))
    p.add_argument("--data", default=str(REPO / "data" / "world" / "eval" / "val"))
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--out", default=None, help="write the table as JSON here")
    p.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = p.parse_args()
    data = Path(args.data)
    if not (data / "llava.json").is_file():
        raise SystemExit(f"{data}/llava.json not found: run `omniplug eval` once (it writes the eval splits) or "
                         f"`omniplug world generate --out {data} --split val`")
    model = build_model(load_config(args.config, args.overrides)).eval()
    items = _conversation_pairs(data)[1][:args.n]
    right: dict[str, int] = Counter()
    total: dict[str, int] = Counter()
    truths: dict[str, Counter] = defaultdict(Counter)
    wrong: dict[str, Counter] = defaultdict(Counter)
    for chunk in _batches(items, 16):
        for (_, question, truth), text in zip(chunk, _answer(model, _text_samples(chunk), max_new_tokens=8).texts):
            kind = kind_of(question)
            total[kind] += 1
            truths[kind][_norm(truth)] += 1
            if _norm(text) == _norm(truth):
                right[kind] += 1
            else:
                wrong[kind][f"{_norm(text)} (true: {_norm(truth)})"] += 1
    table = {kind: {"n": total[kind], "accuracy": round(right[kind] / total[kind], 3),
                    "prior": round(truths[kind].most_common(1)[0][1] / total[kind], 3),
                    "top_wrong": wrong[kind].most_common(3)} for kind in sorted(total, key=lambda k: -total[k])}
    table["all"] = {"n": sum(total.values()), "accuracy": round(sum(right.values()) / max(sum(total.values()), 1), 3)}
    for kind, row in table.items():
        print(f"{kind:10s} n={row['n']:4d} accuracy={row['accuracy']:.3f}"
              + (f" prior={row['prior']:.3f} wrong: {row['top_wrong']}" if "prior" in row else ""))
    if args.out:
        Path(args.out).write_text(json.dumps(table, indent=1) + "\n")


if __name__ == "__main__":
    main()

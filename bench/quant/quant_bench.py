"""fp32 vs int8 vs int4 (CPU, optimum-quanto) on the default model: weight bytes, latency per request
and the world eval's figures.

    python bench/quant/quant_bench.py            # writes bench/quant/quant_bench.json

What is quantised: ``bits`` in the config's ``llm`` entry (``llm.<entry>.bits=8|4``) quantises the LLM
only — every Linear (quanto qint8 / qint4; with 4 bits the LM head is qint8) and its input embedding
table (int8 rows); encoder, projectors and decoders stay fp32. Bytes are ``omniplug.llms.quant.weight_bytes``:
the real storage of parameters and buffers, quantised tensors counted by their inner data and scales.

Latency: the mixed requests of ``omniplug bench infer`` (``omniplug.eval.infer_bench.world_requests``: caption, VQA, referring and
reasoning segmentation on world val scenes) answered one by one through ``Pipeline``; the variants
alternate ``--repeats`` times and the minimum and median per-request time are reported. Agreement:
share of those answers whose text equals fp32's, and the mean IoU of their masks with fp32's.

Quality: ``omniplug.eval.world.evaluate_world`` on a val split generated with seed 101 (not a training
seed): ``--n`` samples for each task, ``--n-generation`` for image generation (slow).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

VARIANTS = {"fp32": None, "int8": 8, "int4": 4}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "default" / "omni_tiny.yaml"))
    p.add_argument("--world", default=str(REPO / "data" / "world" / "eval_val"),
                   help="world val split (generated with n=200, seed=101 when missing)")
    p.add_argument("--n", type=int, default=100, help="eval samples per task (caption ... panoptic)")
    p.add_argument("--n-generation", type=int, default=20, help="eval samples for image generation")
    p.add_argument("--requests", type=int, default=32, help="requests for latency and agreement")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded)")
    p.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from omniplug.eval.infer_bench import world_requests

    from omniplug.build import build_model
    from omniplug.config import load_config
    from omniplug.data.world_tasks import ensure_split
    from omniplug.eval.world import HEADLINE, TASKS, evaluate_world
    from omniplug.infer.pipeline import Pipeline
    from omniplug.llms.quant import weight_bytes

    root = ensure_split(root=args.world, split="val", n=200, seed=101)
    cfg = load_config(args.config)
    entry = cfg.one_model.llm
    pipes = {}
    for name, bits in VARIANTS.items():
        overrides = [f"llm.{entry}.bits={bits}"] if bits else []
        model = build_model(load_config(args.config, overrides))
        pipes[name] = Pipeline(model, max_length=max(cfg.data.max_length, 512))

    sizes = {}
    for name, pipe in pipes.items():
        m = pipe.model
        parts = {part: weight_bytes(module) for part, module in m.named_children()}
        sizes[name] = {"llm": weight_bytes(m.llm), "model": weight_bytes(m), "parts": parts}
    for name in sizes:
        sizes[name]["llm_ratio"] = round(sizes[name]["llm"] / sizes["fp32"]["llm"], 4)
        sizes[name]["model_ratio"] = round(sizes[name]["model"] / sizes["fp32"]["model"], 4)

    specs = [request for _, request in world_requests(root, args.requests)]

    def answer(pipe):
        return [pipe(r.images, r.prompt, max_new_tokens=r.options.max_new_tokens) for r in specs]

    answers = {name: answer(pipe) for name, pipe in pipes.items()}  # warm-up, kept for agreement
    runs: dict[str, list[float]] = {name: [] for name in pipes}
    for _ in range(args.repeats):
        for name, pipe in pipes.items():
            start = time.perf_counter()
            answer(pipe)
            runs[name].append((time.perf_counter() - start) / len(specs))
    latency = {name: {"ms_per_request_min": round(1000 * min(t), 2),
                      "ms_per_request_median": round(1000 * statistics.median(t), 2),
                      "ratio_to_fp32_min": round(min(t) / min(runs["fp32"]), 3)} for name, t in runs.items()}

    agreement = {}
    for name in pipes:
        same_text = sum(a.text == b.text for a, b in zip(answers[name], answers["fp32"]))
        ious = []
        for a, b in zip(answers[name], answers["fp32"]):
            for x, y in zip(a.masks, b.masks):
                union = np.logical_or(x.mask, y.mask).sum()
                ious.append(np.logical_and(x.mask, y.mask).sum() / union if union else 1.0)
        agreement[name] = {"same_text": round(same_text / len(specs), 3),
                           "mask_iou_vs_fp32": round(float(np.mean(ious)), 4) if ious else None,
                           "masks": len(ious)}

    quality = {}
    text_and_masks = [t for t in TASKS if t != "generation"]
    for name, pipe in pipes.items():
        start = time.perf_counter()
        res = evaluate_world(pipe.model, root, n=args.n, batch_size=16, tasks=text_and_masks)
        res.update(evaluate_world(pipe.model, root, n=args.n_generation, batch_size=16, tasks=["generation"]))
        quality[name] = {"metrics": res, "seconds": round(time.perf_counter() - start, 1)}
    headline = {name: {t: round(100 * q["metrics"][t][HEADLINE[t]], 2) for t in TASKS if t in q["metrics"]}
                for name, q in quality.items()}
    delta = {name: {t: round(headline[name][t] - headline["fp32"][t], 2) for t in headline[name]} for name in headline}

    from omniplug.eval.bench_record import record_header

    result = {
        **record_header(repo=REPO, config=args.config, argv=argv),
        "quantised": f"llm entry '{entry}': every Linear (optimum-quanto qint8 / qint4, with 4 bits the LM head qint8) "
                     f"+ input embedding (int8 rows); encoder, projectors, decoders fp32",
        "eval": {"split": str(root.relative_to(REPO)) if root.is_relative_to(REPO) else str(root), "seed": 101,
                 "n_per_task": args.n, "n_generation": args.n_generation},
        "weight_bytes": sizes,
        "latency": latency,
        "agreement_with_fp32": agreement,
        "headline_points": headline,
        "delta_points_vs_fp32": delta,
        "quality": quality,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("latency", "agreement_with_fp32", "headline_points", "delta_points_vs_fp32")},
                     indent=2))
    print(json.dumps({n: {k: v for k, v in s.items() if k != "parts"} for n, s in sizes.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

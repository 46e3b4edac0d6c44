"""Requests per second of ``Pipeline.batch`` (batch 8) against the same requests as sequential single
calls, on the default model and world val images; checks that every mode gives the same answers.

    python bench/infer/batch_throughput.py --threads 1   # writes bench/infer/batch_throughput_t1.json

Requests (``--n``, default 48) cycle through four kinds on successive val scenes: a caption
("Describe the image."-style), a VQA question, a referring-segmentation prompt and a reasoning-
segmentation prompt, exactly as the world's readers phrase them, with the world eval's answer
limits (64, 8, 96, 96 new tokens). Greedy decoding. Modes:

* ``sequential`` — ``pipe(image, prompt, max_new_tokens=...)`` for each request in turn;
* ``arrival`` — ``pipe.batch`` on each run of ``--batch-size`` consecutive requests (chunks in
  arrival order: every chunk holds all four kinds);
* ``batch`` — one ``pipe.batch`` call on all requests (chunks of similar answer budgets).

The modes alternate ``--repeats`` times after one warm-up round each. The machine is shared, so the
minimum (least disturbed) and the median wall time of each mode are both reported; speed-ups use
the minimum.
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


def world_requests(root: Path, n: int) -> list[dict]:
    """``n`` requests of four kinds (caption, vqa, referring, reasoning) on successive scenes."""
    from omniplug.data.world_tasks import _reader
    from omniplug.eval.world import _conversation_pairs

    captions, vqa = _conversation_pairs(root)
    referring, reasoning = _reader("referring", root, {}), _reader("reasoning", root, {})
    out = []
    for i in range(n):
        kind = ("caption", "vqa", "referring", "reasoning")[i % 4]
        k = i // 4
        if kind == "caption":
            image, prompt, _ = captions[k]
            limit = 64
        elif kind == "vqa":
            image, prompt, _ = vqa[4 * k]  # a question about scene ~k
            limit = 8
        else:
            sample = (referring if kind == "referring" else reasoning)[k]
            image, prompt = sample.images[0], sample.turns[0].text
            limit = 96
        out.append({"kind": kind, "image": image, "prompt": prompt, "max_new_tokens": limit})
    return out


def llm_step_costs(model, *, prompt_len: int, batch_size: int, steps: int = 40, repeats: int = 5) -> dict:
    """Where a chunk's time goes: the LLM's prefill of ``prompt_len`` positions and one greedy decode step,
    for 1 row and for ``batch_size`` rows (transformers' generate, minimum of ``repeats``)."""
    import torch

    hf = model.llm.model
    width = model.llm.hidden_size
    out = {}
    for rows in (1, batch_size):
        embeds = torch.randn(rows, prompt_len, width)
        mask = torch.ones(rows, prompt_len, dtype=torch.long)
        options = dict(inputs_embeds=embeds, attention_mask=mask, do_sample=False, pad_token_id=0, eos_token_id=None,
                       temperature=None, top_p=None, top_k=None)
        prefill, full = [], []
        with torch.no_grad():
            for _ in range(repeats):
                start = time.perf_counter()
                hf(inputs_embeds=embeds, attention_mask=mask, use_cache=True, logits_to_keep=1)
                prefill.append(time.perf_counter() - start)
                start = time.perf_counter()
                hf.generate(max_new_tokens=steps, min_new_tokens=steps, **options)
                full.append(time.perf_counter() - start)
        out[f"rows_{rows}"] = {"prefill": round(1000 * min(prefill), 2),
                               "decode_step": round(1000 * (min(full) - min(prefill)) / (steps - 1), 2)}
    out["prompt_positions"] = prompt_len
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(REPO / "configs" / "default" / "omni_tiny.yaml"))
    p.add_argument("--world", default=str(REPO / "data" / "world" / "eval_val"),
                   help="world val split (generated with n=200, seed=101 when missing)")
    p.add_argument("--n", type=int, default=48, help="requests")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (recorded)")
    p.add_argument("--out", default=None, help="default: bench/infer/batch_throughput_t<threads>.json")
    args = p.parse_args(argv)
    args.out = args.out or str(Path(__file__).with_name(f"batch_throughput_t{args.threads}.json"))

    import numpy as np
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    from omniplug.data.images import open_image
    from omniplug.data.world_tasks import ensure_split
    from omniplug.infer.pipeline import Options, Pipeline, Request

    root = ensure_split(root=args.world, split="val", n=200, seed=101)
    specs = world_requests(root, args.n)
    requests = [Request(s["prompt"], [open_image(s["image"]) if isinstance(s["image"], str) else s["image"]],
                        options=Options(max_new_tokens=s["max_new_tokens"])) for s in specs]
    pipe = Pipeline.from_config(args.config, batch_size=args.batch_size)

    def sequential():
        return [pipe(r.images, r.prompt, max_new_tokens=r.options.max_new_tokens) for r in requests]

    def arrival():
        size = args.batch_size
        return [resp for at in range(0, len(requests), size) for resp in pipe.batch(requests[at:at + size])]

    def batched():
        return pipe.batch(requests)

    modes = {"sequential": sequential, "arrival": arrival, "batch": batched}
    runs: dict[str, list[float]] = {name: [] for name in modes}
    outputs = {name: fn() for name, fn in modes.items()}  # warm-up
    for _ in range(args.repeats):
        for name, fn in modes.items():
            start = time.perf_counter()
            outputs[name] = fn()
            runs[name].append(time.perf_counter() - start)

    mismatches = []
    for name in ("arrival", "batch"):
        for i, (a, b) in enumerate(zip(outputs["sequential"], outputs[name])):
            same = a.text == b.text and len(a.masks) == len(b.masks) and all(
                np.array_equal(x.mask, y.mask) for x, y in zip(a.masks, b.masks))
            if not same:
                mismatches.append({"mode": name, "index": i, "kind": specs[i]["kind"], "sequential": a.text,
                                   name: b.text})
    kinds = {}
    for spec, response in zip(specs, outputs["sequential"]):
        row = kinds.setdefault(spec["kind"], {"n": 0, "answer_tokens": 0, "masks": 0})
        row["n"] += 1
        row["answer_tokens"] += len(pipe.model.tokenizer.encode(response.text, special=False))
        row["masks"] += len(response.masks)
    best = {name: min(times) for name, times in runs.items()}
    step_costs = llm_step_costs(pipe.model, prompt_len=int(np.mean([len(pipe.collator([pipe._sample(0, r)]).input_ids[0])
                                                                    for r in requests[:8]])), batch_size=args.batch_size)
    from omniplug.eval.bench_record import record_header

    result = {
        **record_header(repo=REPO, config=args.config, argv=argv),
        "requests": len(requests), "batch_size": args.batch_size, "repeats": args.repeats,
        "kinds": kinds,
        "seconds": {name: [round(t, 3) for t in times] for name, times in runs.items()},
        "requests_per_s": {name: round(len(requests) / t, 2) for name, t in best.items()},
        "requests_per_s_median": {name: round(len(requests) / statistics.median(times), 2) for name, times in runs.items()},
        "speedup": {name: round(best["sequential"] / best[name], 2) for name in ("arrival", "batch")},
        "speedup_median": {name: round(statistics.median(runs["sequential"]) / statistics.median(runs[name]), 2)
                           for name in ("arrival", "batch")},
        "llm_step_costs_ms": step_costs,
        "identical_outputs": not mismatches,
        "mismatches": mismatches,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("requests_per_s", "speedup", "speedup_median", "identical_outputs",
                                             "llm_step_costs_ms")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

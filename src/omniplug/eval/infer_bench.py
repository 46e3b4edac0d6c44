"""``omniplug bench infer``: inference speed as ratios measured side by side in one process.

This machine's absolute speed varies by 20-50 % from one run to the next, so every figure is a ratio
of two sides timed alternately (side A, side B, side A, ...) in the same process; each side's
minimum over the repeats is used (the least disturbed run) and the median is kept beside it. The
load average is recorded.

The prefix cache is off in every section but ``conversation`` (repeated prompts would be answered from
it). Sections (each returns a dict; :func:`run` joins them and adds the headline ratios):

* ``batching`` — world requests in arrival order (caption, VQA, referring, reasoning on successive
  val scenes, with the world eval's answer limits), sequential ``pipe(image, prompt)`` vs one
  ``pipe.batch(requests)`` through continuous batching with 8 slots; answers must be identical.
  Where the time goes (encoder, LLM prefill, LLM decode steps, decoders, collation) is timed for both.
  -> ``batch8_speedup``. The full run repeats it on captions alone, where decoding dominates
  (``batch8_speedup_captions``).
* ``three_tasks`` — one image asked a caption, a question and a referring mask: the three as one
  group (the image encoded once, the shared prompt prefix prefilled once) vs each alone.
  -> ``three_tasks_one_image_ratio`` (three together / the mean of one alone).
* ``overhead`` — omniplug vs the raw transformers model on identical weights: the LLM forward, and
  greedy generation of the same tokens (``OneModel.generate`` vs encoding the same prompt and calling
  ``generate(inputs_embeds=...)``), at the model's size and at a larger random Llama.
  -> ``overhead_vs_transformers`` (the larger of the two generate ratios at the model's size).
* ``conversation`` — a second turn (a mask question after a caption, the first turn in its history)
  answered from the prefix cache (the image and the first turn's keys and values kept) vs from
  scratch (at the larger Llama too, with short answers: there prefill dominates).
  -> ``second_turn_ratio``.
* ``int8`` — ``quant_backend: torch_int8`` (int8 GEMMs) vs fp32: LLM weight bytes, sequential latency,
  the same answers, and (full run) the world eval's figures on both. -> ``int8_latency_ratio``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from omniplug.infer.pipeline import Options, Pipeline, Request

LIMITS = {"caption": 64, "vqa": 8, "referring": 96, "reasoning": 96}  # the world eval's max_new_tokens
LARGER_LLAMA = {"hidden_size": 1024, "num_hidden_layers": 12, "num_attention_heads": 16, "num_key_value_heads": 16,
                "intermediate_size": 2816}


# --- timing ---------------------------------------------------------------------------------------------
def alternate(sides: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every side once to warm up, then ``repeats`` rounds of each side in turn: (seconds, last outputs)."""
    outputs = {name: fn() for name, fn in sides.items()}
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, fn in sides.items():
            start = time.perf_counter()
            outputs[name] = fn()
            seconds[name].append(time.perf_counter() - start)
    return seconds, outputs


def ratio(seconds: dict[str, list[float]], num: str, den: str) -> dict[str, float]:
    return {"min": round(min(seconds[num]) / min(seconds[den]), 3),
            "median": round(statistics.median(seconds[num]) / statistics.median(seconds[den]), 3)}


@contextmanager
def stage_times(pipe: Pipeline) -> Iterator[dict[str, float]]:
    """Seconds spent in each stage while the block runs (instance attributes wrap the real methods)."""
    times = {"collate": 0.0, "encode": 0.0, "llm_prefill": 0.0, "llm_decode": 0.0, "decoders": 0.0}
    model, llm = pipe.model, pipe.model.llm

    def wrap(obj, name: str, stage: Callable[..., str]):
        real = getattr(obj, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                times[stage(*args)] += time.perf_counter() - start

        setattr(obj, name, timed)
        return name

    patched = [(pipe, wrap(pipe, "_collate", lambda *a: "collate")),
               (model, wrap(model, "embed_inputs", lambda *a: "encode")),
               (model, wrap(model, "finish_generation", lambda *a: "decoders")),
               (llm, wrap(llm, "forward_cached", lambda embeds, *a: "llm_prefill" if embeds.shape[1] > 1 else "llm_decode"))]
    try:
        yield times
    finally:
        for obj, name in patched:
            delattr(obj, name)


# --- requests ---------------------------------------------------------------------------------------------
def world_requests(root: Path, n: int) -> list[tuple[str, Request]]:
    """``n`` (kind, request) pairs cycling caption / VQA / referring / reasoning over successive val scenes."""
    from omniplug.data.images import open_image
    from omniplug.data.world_tasks import _reader
    from omniplug.eval.world import _conversation_pairs

    captions, vqa = _conversation_pairs(root)
    referring, reasoning = _reader("referring", root, {}), _reader("reasoning", root, {})
    out = []
    for i in range(n):
        kind, k = ("caption", "vqa", "referring", "reasoning")[i % 4], i // 4
        if kind in ("caption", "vqa"):
            image, prompt, _ = captions[k] if kind == "caption" else vqa[4 * k]
        else:
            sample = (referring if kind == "referring" else reasoning)[k]
            image, prompt = sample.images[0], sample.turns[0].text
        image = open_image(image) if isinstance(image, (str, Path)) else image
        out.append((kind, Request(prompt, [image], options=Options(max_new_tokens=LIMITS[kind]))))
    return out


def same_answers(a, b) -> bool:
    return a.text == b.text and len(a.masks) == len(b.masks) and all(
        np.array_equal(x.mask, y.mask) for x, y in zip(a.masks, b.masks))


# --- sections -----------------------------------------------------------------------------------------------
def bench_batching(pipe: Pipeline, requests: list[tuple[str, Request]], *, repeats: int, slots: int = 8) -> dict:
    reqs = [r for _, r in requests]

    def sequential():
        return [pipe(r.images, r.prompt, max_new_tokens=r.options.max_new_tokens) for r in reqs]

    def batched():
        return pipe.batch(reqs, batch_size=slots)

    seconds, outputs = alternate({"sequential": sequential, "batch": batched}, repeats)
    stages = {}
    for name, fn in (("sequential", sequential), ("batch", batched)):
        with stage_times(pipe) as times:
            start = time.perf_counter()
            fn()
            total = time.perf_counter() - start
        stages[name] = {"total": round(total, 3), **{k: round(v, 3) for k, v in times.items()},
                        "other": round(total - sum(times.values()), 3)}
    mismatches = [i for i, (a, b) in enumerate(zip(outputs["sequential"], outputs["batch"])) if not same_answers(a, b)]
    tokens = [len(pipe.model.tokenizer.encode(r.text, special=False)) for r in outputs["sequential"]]
    return {"requests": len(reqs), "slots": slots, "answer_tokens_mean": round(float(np.mean(tokens)), 1),
            "seconds": {k: [round(t, 3) for t in v] for k, v in seconds.items()},
            "requests_per_s": {k: round(len(reqs) / min(v), 2) for k, v in seconds.items()},
            "speedup": ratio(seconds, "sequential", "batch"), "stage_seconds": stages,
            "identical_outputs": not mismatches, "mismatched_requests": mismatches}


def bench_three_tasks(pipe: Pipeline, requests: list[tuple[str, Request]], *, images: int, repeats: int) -> dict:
    """Caption, VQA and referring prompts of scene k, all asked of scene k's caption image."""
    by_kind: dict[str, list[Request]] = {}
    for kind, request in requests:
        by_kind.setdefault(kind, []).append(request)
    rows = []
    for k in range(min(images, *(len(by_kind[kind]) for kind in ("caption", "vqa", "referring")))):
        image = by_kind["caption"][k].images[0]
        group = [Request(by_kind[kind][k].prompt, [image], options=Options(max_new_tokens=LIMITS[kind]))
                 for kind in ("caption", "vqa", "referring")]
        sides = {f"one_{i}": (lambda r=r: pipe.batch([r])) for i, r in enumerate(group)}
        sides["three"] = lambda: pipe.batch(group)
        seconds, outputs = alternate(sides, repeats)
        one = float(np.mean([min(seconds[f"one_{i}"]) for i in range(3)]))
        rows.append({"three_s": min(seconds["three"]), "one_mean_s": one,
                     "one_max_s": max(min(seconds[f"one_{i}"]) for i in range(3)),
                     "separate_s": sum(min(seconds[f"one_{i}"]) for i in range(3)),
                     "same_answers": all(same_answers(outputs["three"][i], outputs[f"one_{i}"][0]) for i in range(3))})
    three = float(np.mean([r["three_s"] for r in rows]))
    return {"images": len(rows), "three_together_s": round(three, 4),
            "one_alone_mean_s": round(float(np.mean([r["one_mean_s"] for r in rows])), 4),
            "ratio_vs_mean_one": round(float(np.mean([r["three_s"] / r["one_mean_s"] for r in rows])), 3),
            "ratio_vs_longest_one": round(float(np.mean([r["three_s"] / r["one_max_s"] for r in rows])), 3),
            "speedup_vs_three_separate": round(float(np.mean([r["separate_s"] / r["three_s"] for r in rows])), 3),
            "identical_outputs": all(r["same_answers"] for r in rows)}


def bench_overhead(pipe: Pipeline, requests: list[tuple[str, Request]], *, repeats: int, max_new_tokens: int = 24) -> dict:
    """omniplug's LLM forward and greedy generation vs the same transformers model called directly."""
    model, hf = pipe.model, pipe.model.llm.model
    tok = model.tokenizer
    prompts = [r for kind, r in requests if kind in ("caption", "vqa")][:4]
    batches = [pipe._collate([(0, r)])[0] for r in prompts]
    embedded = [model.prepare_generation(b, max_new_tokens=max_new_tokens) for b in batches]

    def omni_forward():
        with torch.no_grad():
            return [model.llm(p.embeds, p.batch.attention_mask).logits for p in embedded]

    def raw_forward():
        with torch.no_grad():
            return [hf(inputs_embeds=p.embeds, attention_mask=p.batch.attention_mask).logits for p in embedded]

    def omni_generate():
        return [model.generate(b, max_new_tokens=max_new_tokens).token_ids[0] for b in batches]

    def raw_generate():
        out = []
        with torch.no_grad():
            for b in batches:
                embeds, _ = model.embed_inputs(b.input_ids, b.pixel_values)
                seq = hf.generate(inputs_embeds=embeds, attention_mask=b.attention_mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=tok.eos_id,
                                  pad_token_id=tok.pad_id)[0].tolist()
                out.append([t for t in seq if t != tok.pad_id and t != tok.eos_id])
        return out

    f_seconds, f_out = alternate({"omniplug": omni_forward, "transformers": raw_forward}, repeats)
    g_seconds, g_out = alternate({"omniplug": omni_generate, "transformers": raw_generate}, repeats)
    same_logits = max(float((a - b).abs().max()) for a, b in zip(f_out["omniplug"], f_out["transformers"]))
    return {"llm": {"hidden_size": hf.config.hidden_size, "layers": hf.config.num_hidden_layers,
                    "params": sum(p.numel() for p in hf.parameters())},
            "prompts": len(prompts), "max_new_tokens": max_new_tokens,
            "forward_ratio": ratio(f_seconds, "omniplug", "transformers"),
            "generate_ratio": ratio(g_seconds, "omniplug", "transformers"),
            "forward_max_abs_logit_diff": same_logits,
            "same_tokens": g_out["omniplug"] == g_out["transformers"],
            "generated_tokens": sum(len(t) for t in g_out["omniplug"])}


def bench_conversation(pipe: Pipeline, requests: list[tuple[str, Request]], *, turns: int, repeats: int,
                       first_tokens: int = LIMITS["caption"], second_tokens: int = LIMITS["referring"]) -> dict:
    """Turn 2 of ``turns`` conversations, with the prefix cache holding turn 1 vs without a prefix cache."""
    from omniplug.data.conversation import Turn
    from omniplug.infer.engine import PrefixCache

    captions = [Request(r.prompt, r.images, options=Options(max_new_tokens=first_tokens))
                for kind, r in requests if kind == "caption"][:turns]
    referring = [r for kind, r in requests if kind == "referring"][:turns]
    cache = PrefixCache(max_mb=256)
    ratios, same = [], True
    for first, ask in zip(captions, referring):
        answer = Pipeline(pipe.model, markers=False, prefix_cache_mb=0).batch([first])[0].text
        second = Request(ask.prompt, first.images, history=[Turn("user", first.prompt, images=1),
                                                            Turn("assistant", answer)],
                         options=Options(max_new_tokens=second_tokens))

        def cached():
            pipe.prefix_cache = cache
            cache.clear()
            pipe.batch([first])  # turn 1, kept by the cache (untimed: the timer below covers turn 2 alone)
            start = time.perf_counter()
            out = pipe.batch([second])[0]
            return out, time.perf_counter() - start

        def scratch():
            pipe.prefix_cache = None
            start = time.perf_counter()
            out = pipe.batch([second])[0]
            return out, time.perf_counter() - start

        runs = {"cached": [cached() for _ in range(repeats + 1)][1:], "scratch": [scratch() for _ in range(repeats + 1)][1:]}
        ratios.append(min(t for _, t in runs["cached"]) / min(t for _, t in runs["scratch"]))
        same = same and same_answers(runs["cached"][-1][0], runs["scratch"][-1][0])
    pipe.prefix_cache = None
    return {"conversations": len(ratios), "second_turn_ratio": round(float(np.mean(ratios)), 3),
            "reused_positions_per_hit": round(cache.reused_positions / max(1, cache.hits), 1),
            "identical_outputs": same}


def bench_int8(fp32: Pipeline, int8: Pipeline, requests: list[tuple[str, Request]], *, repeats: int,
               world_dir: Path | None, eval_n: int) -> dict:
    from omniplug.llms.quant import weight_bytes

    reqs = [r for _, r in requests]

    def answer(pipe):
        return lambda: [pipe(r.images, r.prompt, max_new_tokens=r.options.max_new_tokens) for r in reqs]

    seconds, outputs = alternate({"fp32": answer(fp32), "int8": answer(int8)}, repeats)
    same_text = float(np.mean([a.text == b.text for a, b in zip(outputs["fp32"], outputs["int8"])]))
    ious = [float((x.mask & y.mask).sum() / max(1, (x.mask | y.mask).sum()))
            for a, b in zip(outputs["fp32"], outputs["int8"]) for x, y in zip(a.masks, b.masks)]
    result = {"backend": "torch_int8", "requests": len(reqs),
              "llm_bytes": {"fp32": weight_bytes(fp32.model.llm), "int8": weight_bytes(int8.model.llm)},
              "latency_ms": {k: round(1000 * min(v) / len(reqs), 2) for k, v in seconds.items()},
              "latency_ratio": ratio(seconds, "int8", "fp32"),
              "same_answer_text": round(same_text, 3), "mask_iou_with_fp32": round(float(np.mean(ious)), 4) if ious else None}
    result["llm_bytes"]["ratio"] = round(result["llm_bytes"]["int8"] / result["llm_bytes"]["fp32"], 3)
    if world_dir is not None and eval_n > 0:
        from omniplug.eval.world import evaluate_world

        tasks = ["caption", "vqa", "referring", "reasoning", "semantic", "part", "panoptic"]
        figures = {name: evaluate_world(p.model, world_dir, n=eval_n, tasks=tasks)
                   for name, p in (("fp32", fp32), ("int8", int8))}
        result["world_eval"] = {"n_per_task": eval_n, **figures}
        result["quality_delta_points"] = _deltas(figures["fp32"], figures["int8"])
    return result


def _deltas(a: dict, b: dict, prefix: str = "") -> dict[str, float]:
    """int8 - fp32 in points (x100) for every number in [0, 1] the two reports share."""
    out = {}
    for key, value in a.items():
        other = b.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            out.update(_deltas(value, other, f"{prefix}{key}."))
        elif isinstance(value, (int, float)) and isinstance(other, (int, float)) and 0 <= value <= 1 \
                and key != "n" and not key.endswith("seconds"):
            out[f"{prefix}{key}"] = round(100 * (other - value), 2)
    return out


# --- the command's body -----------------------------------------------------------------------------------
def write_larger_llama(tokenizer_dir: Path, out: Path) -> Path:
    """A config-only random Llama of :data:`LARGER_LLAMA`'s size with the tokenizer's vocabulary."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tokenizer_dir)
    for key, value in LARGER_LLAMA.items():
        setattr(config, key, value)
    config.head_dim = LARGER_LLAMA["hidden_size"] // LARGER_LLAMA["num_attention_heads"]
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "special_tokens")):
            (out / name).write_bytes((tokenizer_dir / name).read_bytes())
    return out


def run(config: str, *, quick: bool, world: str | Path, threads: int, larger: bool,
        progress: Callable[[str], None] = lambda _: None, partial: Callable[[dict], None] = lambda _: None) -> dict:
    """Every section in turn; ``partial`` receives the record so far after each (a long run keeps what it
    measured if it is stopped)."""
    from omniplug.config import load_config
    from omniplug.data.world_tasks import ensure_split

    torch.set_num_threads(threads)
    repeats = 1 if quick else 3
    root = ensure_split(root=world, split="val", n=200, seed=101)
    requests = world_requests(root, 16 if quick else 48)
    cfg = load_config(config)
    llm_entry = cfg.one_model.llm
    started = time.perf_counter()
    progress("loading the model (fp32 and torch_int8)")
    pipe = Pipeline.from_config(config, prefix_cache_mb=0)
    int8 = Pipeline.from_config(config, [f"llm.{llm_entry}.bits=8", f"llm.{llm_entry}.quant_backend=torch_int8"],
                                prefix_cache_mb=0)
    result: dict[str, Any] = {"quick": quick, "threads": threads, "repeats": repeats}
    progress("continuous batching vs sequential")
    result["batching"] = bench_batching(pipe, requests, repeats=repeats)
    if not quick:  # where decoding dominates: captions only (~30-token answers)
        captions = [(k, r) for k, r in world_requests(root, 4 * len(requests) // 3) if k == "caption"]
        result["batching_captions"] = bench_batching(pipe, captions, repeats=repeats)
    partial(result)
    progress("three tasks of one image vs one")
    result["three_tasks"] = bench_three_tasks(pipe, requests, images=4 if quick else 12, repeats=repeats)
    partial(result)
    progress("a conversation's second turn: prefix cache vs from scratch")
    result["conversation"] = bench_conversation(pipe, requests, turns=2 if quick else 6, repeats=repeats)
    partial(result)
    progress("omniplug vs transformers")
    result["overhead"] = {"model": bench_overhead(pipe, requests, repeats=repeats + 1)}
    partial(result)
    progress("int8 vs fp32")
    result["int8"] = {"model": bench_int8(pipe, int8, requests, repeats=repeats, world_dir=None if quick else root,
                                          eval_n=0 if quick else 50)}
    partial(result)
    if larger and not quick:
        base = Path(str(cfg.catalogues["llm"][llm_entry].params["model_name_or_path"]))
        with tempfile.TemporaryDirectory() as tmp:
            path = write_larger_llama(base, Path(tmp) / "llama")
            overrides = [f"llm.{llm_entry}.model_name_or_path={path}", "one_model.weights=null"]
            progress(f"the same at a larger random Llama ({LARGER_LLAMA['hidden_size']} x {LARGER_LLAMA['num_hidden_layers']})")
            torch.manual_seed(0)
            big = Pipeline.from_config(config, overrides, prefix_cache_mb=0)
            big_int8 = Pipeline.from_config(config, overrides + [f"llm.{llm_entry}.bits=8",
                                                                 f"llm.{llm_entry}.quant_backend=torch_int8"],
                                            prefix_cache_mb=0)
            result["overhead"]["larger_llama"] = bench_overhead(big, requests, repeats=repeats)
            result["conversation_larger_llama"] = bench_conversation(big, requests, turns=3, repeats=repeats,
                                                                      first_tokens=8, second_tokens=4)
            result["int8"]["larger_llama"] = bench_int8(big, big_int8, requests[:8], repeats=repeats, world_dir=None,
                                                        eval_n=0)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    overhead = result["overhead"]["model"]
    result["headline"] = {
        "batch8_speedup": result["batching"]["speedup"]["min"],
        "three_tasks_one_image_ratio": result["three_tasks"]["ratio_vs_mean_one"],
        "three_tasks_vs_longest_one": result["three_tasks"]["ratio_vs_longest_one"],
        "second_turn_ratio": result["conversation"]["second_turn_ratio"],
        "overhead_vs_transformers": max(overhead["forward_ratio"]["min"], overhead["generate_ratio"]["min"]),
        "int8_latency_ratio": result["int8"]["model"]["latency_ratio"]["min"],
        "identical_outputs": all(result[k]["identical_outputs"] for k in ("batching", "three_tasks", "conversation")),
    }
    if "batching_captions" in result:
        result["headline"]["batch8_speedup_captions"] = result["batching_captions"]["speedup"]["min"]
    if "larger_llama" in result["overhead"]:
        big = result["overhead"]["larger_llama"]
        result["headline"]["overhead_vs_transformers_larger"] = max(big["forward_ratio"]["min"],
                                                                    big["generate_ratio"]["min"])
        result["headline"]["int8_latency_ratio_larger"] = result["int8"]["larger_llama"]["latency_ratio"]["min"]
        result["headline"]["second_turn_ratio_larger"] = result["conversation_larger_llama"]["second_turn_ratio"]
    return result


def summary_lines(result: dict) -> list[str]:
    h = result["headline"]
    lines = [f"{key:34s} {value}" for key, value in h.items()]
    stages = result["batching"]["stage_seconds"]
    lines.append("where the time goes (s): " + "; ".join(
        f"{mode}: " + ", ".join(f"{k} {v}" for k, v in parts.items()) for mode, parts in stages.items()))
    return lines


def dumps(result: dict) -> str:
    return json.dumps(result, indent=2)

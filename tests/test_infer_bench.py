"""``omniplug bench infer`` pieces on tiny models: every section measures real runs, checks the answers it
compares, and reports the ratios the headline reads; bad arguments fail before anything loads."""

from __future__ import annotations

import pytest
import torch

from omniplug.eval import infer_bench
from omniplug.infer.pipeline import Options, Pipeline, Request


@pytest.fixture(scope="module")
def pipe(tiny_dir):
    from omniplug.build import build_model

    torch.manual_seed(0)
    return Pipeline(build_model(tiny_dir / "seg.yaml"), prefix_cache_mb=0)  # as the bench builds it


@pytest.fixture(scope="module")
def requests(tiny_dir):
    images = sorted((tiny_dir / "seg_data" / "shapes_refcoco" / "images").glob("*.png"))[:3]
    kinds = [("caption", "Describe the image."), ("vqa", "How many circles are there?"),
             ("referring", "Please segment the red circle."), ("reasoning", "Which shape is on the left?")]
    return [(kind, Request(prompt, [str(image)], options=Options(max_new_tokens=infer_bench.LIMITS[kind] // 8)))
            for image in images for kind, prompt in kinds]


def test_batching_section_times_both_sides_and_checks_answers(pipe, requests):
    out = infer_bench.bench_batching(pipe, requests, repeats=1, slots=4)
    assert out["requests"] == 12 and out["identical_outputs"] and out["mismatched_requests"] == []
    assert set(out["seconds"]) == {"sequential", "batch"} and all(len(v) == 1 for v in out["seconds"].values())
    assert out["speedup"]["min"] > 0
    for stages in out["stage_seconds"].values():
        parts = {k: v for k, v in stages.items() if k not in ("total", "other")}
        assert set(parts) == {"collate", "encode", "llm_prefill", "llm_decode", "decoders"}
        assert parts["llm_prefill"] > 0 and parts["llm_decode"] > 0 and sum(parts.values()) <= stages["total"] + 1e-3
    assert not any(k in vars(pipe) for k in ("_collate",)) and "forward_cached" not in vars(pipe.model.llm)


def test_three_tasks_and_overhead_sections(pipe, requests):
    three = infer_bench.bench_three_tasks(pipe, requests, images=2, repeats=1)
    assert three["images"] == 2 and three["identical_outputs"]
    assert three["ratio_vs_mean_one"] >= three["ratio_vs_longest_one"] > 0
    over = infer_bench.bench_overhead(pipe, requests, repeats=1, max_new_tokens=6)
    assert over["same_tokens"] and over["forward_max_abs_logit_diff"] == 0.0
    assert over["prompts"] == 4 and over["generate_ratio"]["min"] > 0 and over["llm"]["layers"] == 2


def test_conversation_section_reuses_the_first_turn(tiny_dir, requests):
    from omniplug.build import build_model

    torch.manual_seed(0)
    pipe = Pipeline(build_model(tiny_dir / "seg.yaml"), prefix_cache_mb=0)
    out = infer_bench.bench_conversation(pipe, requests, turns=2, repeats=1)
    assert out["conversations"] == 2 and out["identical_outputs"]
    assert out["reused_positions_per_hit"] > 16 and out["second_turn_ratio"] > 0
    assert pipe.prefix_cache is None  # left as it was


def test_int8_section_and_deltas(tiny_dir, pipe, requests):
    from omniplug.build import build_model

    torch.manual_seed(0)
    int8 = Pipeline(build_model(tiny_dir / "seg.yaml", ["llm.tiny_llama.bits=8", "llm.tiny_llama.quant_backend=torch_int8"]),
                    prefix_cache_mb=0)
    out = infer_bench.bench_int8(pipe, int8, requests[:4], repeats=1, world_dir=None, eval_n=0)
    assert out["llm_bytes"]["int8"] < out["llm_bytes"]["fp32"] and 0 <= out["same_answer_text"] <= 1
    assert "world_eval" not in out and out["latency_ratio"]["min"] > 0
    deltas = infer_bench._deltas({"vqa": {"accuracy": 0.5, "n": 1, "seconds": 0.2}, "pq": 0.25, "steps": 7},
                                 {"vqa": {"accuracy": 0.45, "n": 1, "seconds": 0.3}, "pq": 0.3, "steps": 9})
    assert deltas == {"vqa.accuracy": -5.0, "pq": 5.0}


def test_world_requests_cycle_the_four_kinds(tmp_path):
    from omniplug.data.world_tasks import ensure_split

    root = ensure_split(root=tmp_path / "val", split="val", n=12, seed=101)
    got = infer_bench.world_requests(root, 8)
    assert [kind for kind, _ in got] == ["caption", "vqa", "referring", "reasoning"] * 2
    assert [r.options.max_new_tokens for _, r in got[:4]] == [64, 8, 96, 96]
    assert all(len(r.images) == 1 and r.prompt for _, r in got)


def test_bench_cli_refuses_bad_arguments(tmp_path, capsys):
    from omniplug.cli import main

    assert main(["bench", "infer", "-c", str(tmp_path / "nope.yaml")]) == 2
    assert "config not found" in capsys.readouterr().err
    assert main(["bench", "infer", "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "train"])


def test_larger_llama_config_keeps_the_vocabulary(tiny_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    out = infer_bench.write_larger_llama(tiny_dir / "llama", tmp_path / "big")
    config, small = AutoConfig.from_pretrained(out), AutoConfig.from_pretrained(tiny_dir / "llama")
    assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == (1024, 12, 64)
    assert config.vocab_size == small.vocab_size
    assert len(AutoTokenizer.from_pretrained(out)) == len(AutoTokenizer.from_pretrained(tiny_dir / "llama"))
    assert not list(out.glob("*.safetensors"))  # config only: built from scratch (from_scratch: true)

"""``omniplug inspect --meta``: a model planned from config.json files alone, on the meta device, with the same
parameter counts as the real build and a memory estimate per ZeRO stage and inference precision."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from omniplug.base import count_params
from omniplug.build import build_model
from omniplug.cli import main
from omniplug.weights.hf_local import meta_build

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["seg.yaml", "gen.yaml", "det.yaml", "llava.yaml"])
def test_meta_build_counts_what_the_real_build_has(tiny_dir, name):
    real = build_model(tiny_dir / name)
    with meta_build():
        planned = build_model(tiny_dir / name, load_weights=False)
    assert count_params(planned) == count_params(real)  # trainable counts as peft and train_mode give them
    assert {p.device.type for p in planned.parameters()} == {"meta"}


def _config_only_llava(root: Path, *, hidden: int, layers: int, heads: int, ffn: int, name: str) -> None:
    from transformers import CLIPVisionConfig, LlamaConfig

    LlamaConfig(vocab_size=32000, hidden_size=hidden, intermediate_size=ffn, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=2048,
                pad_token_id=0, bos_token_id=1, eos_token_id=2).save_pretrained(root / name)
    CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=14).save_pretrained(root / "clip-vit-large-patch14")


def _inspect_json(*args: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["inspect", *args, "--json"]) == 0
    return json.loads(out.getvalue())


def test_the_shipped_llava_7b_config_plans_from_config_files_alone(tmp_path):
    _config_only_llava(tmp_path, hidden=4096, layers=32, heads=32, ffn=11008, name="LLaVA-7B-v1")
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["config.json", "config.json"]
    info = _inspect_json("-c", str(REPO / "configs/models/llava_7b.yaml"), f"base_dir={tmp_path}", "--meta",
                         "--gpus", "8")
    llm = info["modules"]["llm"]
    lora = 32 * 4 * 2 * 4096 * 8  # q, k, v, o projections, r 8
    assert llm["params"] == 6_738_415_616 + lora + 2 * 4096 * 2  # Llama-7B + LoRA + the <image> row (and its delta)
    assert llm["trainable_params"] == lora + 2 * 4096  # LoRA + the new token's embedding and LM-head rows
    assert info["modules"]["encoder"]["params"] == 303_179_776 and info["modules"]["encoder"]["trainable_params"] == 0
    mem = info["memory"]
    total = info["total_params"]
    assert mem["weights_bytes"] == 4 * total  # fp32 as the config builds it
    zero = mem["train_per_gpu_bytes"]
    assert zero["zero0"] > zero["zero1"] > zero["zero2"] > zero["zero3"]
    assert zero["zero3"] == pytest.approx(zero["zero0"] / 8)
    inf = mem["inference_bytes"]
    assert inf["fp16"] == 2 * total and inf["int4"] < inf["int8"] < inf["fp16"]


def test_the_13b_config_plans_too_and_the_table_prints(tmp_path, capsys):
    _config_only_llava(tmp_path, hidden=5120, layers=40, heads=40, ffn=13824, name="LLaVA-13B-v1")
    assert main(["inspect", "-c", str(REPO / "configs/models/llava_13b.yaml"), f"base_dir={tmp_path}", "--meta"]) == 0
    out = capsys.readouterr().out
    assert "memory plan" in out and "ZeRO-3" in out and "int4" in out
    llm = 13_015_864_320 + 40 * 4 * 2 * 5120 * 8 + 2 * 5120 * 2  # Llama-13B + LoRA r 8 + the <image> rows
    assert f"{llm:,}" in out

"""LLM weight quantisation on CPU (optimum-quanto): int8 and int4 stay close to fp32 and are smaller."""

from __future__ import annotations

import pytest
import torch

from omniplug.build import build_model
from omniplug.quant import weight_bytes

pytest.importorskip("optimum.quanto")


@pytest.fixture(scope="module")
def fp32(tiny_dir):
    return build_model(tiny_dir / "composed.yaml").eval()


def _logits(model):
    ids = torch.tensor([[1, 5, 7, 9, 11, 12, 40, 41]])
    with torch.no_grad():
        return model.llm(model.llm.embed(ids), torch.ones_like(ids)).logits


@pytest.mark.parametrize("bits,tol", [(8, 0.02), (4, 0.25)])
def test_quantised_llm_close_to_fp32(tiny_dir, fp32, bits, tol):
    q = build_model(tiny_dir / "composed.yaml", [f"llm.tiny_llama.bits={bits}"]).eval()
    ref, got = _logits(fp32), _logits(q)
    # tolerance relative to the logit range of this random tiny model
    assert (got - ref).abs().max().item() <= tol * ref.abs().max().item()
    assert weight_bytes(q.llm) < weight_bytes(fp32.llm)
    linear = q.llm.model.base_model.model.model.layers[0].mlp.up_proj
    assert "QLinear" in type(linear).__name__


def test_seed_load_in_8bit_key_and_contradiction(tiny_dir):
    q = build_model(tiny_dir / "composed.yaml", ["llm.tiny_llama.load_in_8bit=true"])
    assert q.llm.bits == 8
    with pytest.raises(ValueError, match="contradicts"):
        build_model(tiny_dir / "composed.yaml", ["llm.tiny_llama.load_in_8bit=true", "llm.tiny_llama.bits=4"])


def test_weight_bytes_counts_quantised_storage(tiny_dir, fp32):
    q4 = build_model(tiny_dir / "composed.yaml", ["llm.tiny_llama.bits=4"])
    layer_fp = fp32.llm.model.base_model.model.model.layers[0].mlp.up_proj.base_layer \
        if hasattr(fp32.llm.model.base_model.model.model.layers[0].mlp.up_proj, "base_layer") \
        else fp32.llm.model.base_model.model.model.layers[0].mlp.up_proj
    layer_q = q4.llm.model.base_model.model.model.layers[0].mlp.up_proj
    fp_bytes = layer_fp.weight.numel() * 4
    q_bytes = weight_bytes(layer_q)
    assert q_bytes < fp_bytes * 0.25  # 4-bit payload plus per-group scales

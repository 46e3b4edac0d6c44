"""LLM weight quantisation on CPU (optimum-quanto): int8 and int4 stay close to fp32 and are smaller."""

from __future__ import annotations

import pytest
import torch

from omniplug.build import build_model
from omniplug.llms.quant import weight_bytes

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


# --- the whole model on the CPU path: LLM outputs and the masks they lead to ---------------------------
@pytest.fixture(scope="module")
def seg_batch(tiny_dir):
    import numpy as np

    from omniplug.data.conversation import Turn
    from omniplug.data.images import open_image
    from omniplug.data.sample import Sample

    images = sorted((tiny_dir / "seg_data" / "shapes_refcoco" / "images").glob("*.png"))[:2]
    empty = np.zeros((48, 64), bool)
    samples = [Sample(turns=[Turn("user", "Please segment the red circle.", images=1), Turn("assistant", "Sure, <seg>.")],
                      images=[open_image(images[0])], targets={"seg": [empty]}),
               Sample(turns=[Turn("user", "the square", images=1), Turn("assistant", "It is <seg>.")],
                      images=[open_image(images[1])], targets={"seg": [empty]})]
    return samples


# tolerances: max |difference| relative to the largest fp32 value, for the LLM's logits and SAM's mask
# logits, and the share of mask pixels on the same side of the threshold (measured on this random tiny
# model: int8 1.6% / 0.04% / 99.98%, int4 14% / 0.4% / 99.9%)
@pytest.mark.parametrize("bits,logit_tol,mask_tol,agree", [(8, 0.03, 0.01, 0.995), (4, 0.25, 0.05, 0.99)])
def test_quantised_model_outputs_close_to_fp32(tiny_dir, seg_batch, bits, logit_tol, mask_tol, agree):
    """Full fine-tuning config (plain embedding table, so it is stored as int8 rows too): teacher-forced
    forward of CLIP + quantised Llama + SAM on two samples."""
    from omniplug.data.collate import Collator
    from omniplug.llms.quant import Int8Embedding

    overrides = ["one_model.conv_type=plain", "one_model.train_mode=2"]
    torch.manual_seed(0)
    ref = build_model(tiny_dir / "seg.yaml", overrides).eval()
    torch.manual_seed(0)
    q = build_model(tiny_dir / "seg.yaml", overrides + [f"llm.tiny_llama.bits={bits}"]).eval()
    assert isinstance(q.llm.model.get_input_embeddings(), Int8Embedding)
    assert q.llm.model.model.layers[0].mlp.up_proj.weight_qtype.name == f"qint{bits}"
    assert q.llm.model.lm_head.weight_qtype.name == "qint8"  # the output head stays 8-bit with 4 bits
    # measured 0.27 / 0.21 here (the 8-bit LM head is a third of this tiny LLM); 0.25 / 0.15 on the default model
    assert weight_bytes(q.llm) <= (0.30 if bits == 8 else 0.22) * weight_bytes(ref.llm)
    batch = Collator(ref)(seg_batch)
    with torch.no_grad():
        want, got = ref(batch), q(batch)
    assert (got.logits - want.logits).abs().max() <= logit_tol * want.logits.abs().max()
    for a, b in zip(got.decoder_outputs["seg"].mask_logits, want.decoder_outputs["seg"].mask_logits):
        assert (a - b).abs().max() <= mask_tol * b.abs().max()
        assert ((a > 0) == (b > 0)).float().mean() >= agree


def test_int8_embedding_rows():
    from torch import nn

    from omniplug.llms.quant import Int8Embedding, quantize_input_embedding

    torch.manual_seed(0)
    table = nn.Embedding(50, 16)
    q = Int8Embedding(table)
    ids = torch.tensor([[0, 7, 49], [3, 3, 1]])
    err = (q(ids) - table(ids)).abs()
    assert (err <= q.scale[ids] / 2 + 1e-7).all()  # at most half a step of the row's scale
    assert weight_bytes(q) == 50 * 16 + 50 * 4  # int8 rows + one fp32 scale per row

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = nn.Module()
            self.inner.embed = table

        def get_input_embeddings(self):
            return self.inner.embed

    holder = Holder()
    assert quantize_input_embedding(holder) and isinstance(holder.inner.embed, Int8Embedding)
    assert not quantize_input_embedding(holder)  # already done: not a plain nn.Embedding any more


# --- torch_int8: PyTorch's dynamic int8 (int8 GEMMs on x86) ------------------------------------------------
def test_torch_int8_backend_runs_int8_linears_and_stays_close(tiny_dir, fp32):
    q = build_model(tiny_dir / "composed.yaml", ["llm.tiny_llama.bits=8", "llm.tiny_llama.quant_backend=torch_int8"])
    q.eval()
    kinds = {type(m).__module__ for name, m in q.llm.model.named_modules() if name.endswith("up_proj.base_layer")
             or name.endswith("up_proj")}
    assert "torch.ao.nn.quantized.dynamic.modules.linear" in kinds  # the base weights are int8 GEMMs ...
    assert not any(type(m).__module__.startswith("torch.ao") for n, m in q.llm.model.named_modules() if "lora_" in n)
    ref, got = _logits(fp32), _logits(q)  # ... LoRA stays float
    assert (got - ref).abs().max().item() <= 0.05 * ref.abs().max().item()
    int8_linears = [n for n, m in q.llm.model.named_modules() if type(m).__name__ == "Linear"
                    and type(m).__module__.startswith("torch.ao")]
    float_bytes = sum(dict(fp32.llm.model.named_modules())[n].weight.numel() * 4 for n in int8_linears)
    saved = weight_bytes(fp32.llm) - weight_bytes(q.llm)
    assert 0.7 * float_bytes < saved < 0.76 * float_bytes  # int8 = a quarter of fp32; packed weights are counted
    # greedy generation through the cached step works on the quantised LLM
    batch_ids = torch.tensor([[1, 5, 7, 9, 11]])
    out = q.llm.generate(q.llm.embed(batch_ids), torch.ones_like(batch_ids), max_new_tokens=3, eos_token_id=None)
    assert out.sequences.shape == (1, 3)
    with pytest.raises(ValueError, match="torch_int8 is 8-bit only"):
        build_model(tiny_dir / "composed.yaml", ["llm.tiny_llama.bits=4", "llm.tiny_llama.quant_backend=torch_int8"])

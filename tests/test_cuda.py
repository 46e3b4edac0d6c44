"""The CUDA paths: bitsandbytes int8 / nf4 loading, the model on the GPU against the CPU, bf16 autocast
training, and the shipped default model on the GPU. Skipped without a CUDA device (CI has none); run on
a GPU machine with ``python -m pytest -q tests/test_cuda.py``. Results: bench/cuda/README.md."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from omniplug.build import build_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
REPO = Path(__file__).resolve().parents[1]


def _logits(model, device):
    ids = torch.tensor([[1, 5, 7, 9, 11, 12, 40, 41]], device=device)
    with torch.no_grad():
        return model.llm(model.llm.embed(ids), torch.ones_like(ids)).logits.float()


@pytest.mark.parametrize("bits,layer,tol", [(8, "Linear8bitLt", 0.05), (4, "Linear4bit", 0.3)])
def test_bitsandbytes_quantises_the_llm_through_yaml(tiny_dir, bits, layer, tol):
    """``bits`` on CUDA picks bitsandbytes (quant_backend auto): the LLM loads quantised on the GPU, its
    logits stay close to fp32's, and its weights take fewer bytes."""
    pytest.importorskip("bitsandbytes")
    from omniplug.llms.quant import weight_bytes

    ref = build_model(tiny_dir / "composed.yaml").eval().to("cuda")
    q = build_model(tiny_dir / "composed.yaml", [f"llm.tiny_llama.bits={bits}"]).eval()
    assert q.llm.quant_backend == "bitsandbytes" and q.llm.bits == bits
    q.to("cuda")
    assert layer in {type(m).__name__ for m in q.llm.modules()}
    want, got = _logits(ref, "cuda"), _logits(q, "cuda")
    assert torch.isfinite(got).all()
    assert (got - want).abs().max().item() <= tol * want.abs().max().item()
    assert weight_bytes(q.llm) < weight_bytes(ref.llm)


def _seg_samples(tiny_dir):
    import numpy as np

    from omniplug.data.conversation import Turn
    from omniplug.data.images import open_image
    from omniplug.data.sample import Sample

    images = sorted((tiny_dir / "seg_data" / "shapes_refcoco" / "images").glob("*.png"))[:2]
    mask = np.zeros((48, 64), bool)
    mask[10:30, 20:40] = True
    return [Sample(turns=[Turn("user", "Please segment the red circle.", images=1), Turn("assistant", "Sure, <seg>.")],
                   images=[open_image(images[0])], targets={"seg": [mask]}),
            Sample(turns=[Turn("user", "the square", images=1), Turn("assistant", "It is <seg>.")],
                   images=[open_image(images[1])], targets={"seg": [mask]})]


def test_the_model_on_cuda_computes_what_it_computes_on_cpu(tiny_dir):
    """CLIP + Llama + SAM, teacher-forced: the same loss and mask logits on the GPU as on the CPU (fp32)."""
    from omniplug.data.collate import Collator

    overrides = ["one_model.conv_type=plain"]
    torch.manual_seed(0)
    cpu = build_model(tiny_dir / "seg.yaml", overrides).eval()
    torch.manual_seed(0)
    gpu = build_model(tiny_dir / "seg.yaml", overrides).eval().to("cuda")
    batch = Collator(cpu)(_seg_samples(tiny_dir))
    with torch.no_grad():
        want, got = cpu(batch), gpu(batch.to("cuda"))
    assert got.loss.item() == pytest.approx(want.loss.item(), rel=1e-3)
    for a, b in zip(got.decoder_outputs["seg"].mask_logits, want.decoder_outputs["seg"].mask_logits):
        assert (a.cpu() - b).abs().max() <= 1e-3 * b.abs().max() + 1e-4


def test_bf16_autocast_training_on_cuda(tiny_dir, tmp_path):
    """``trainer.amp: true`` on CUDA trains under bf16 autocast (fp32 master weights): the loss falls as the
    CPU test's does, stays finite, and the trained weights are fp32."""
    from omniplug.config import load_config
    from omniplug.train import train
    from tests.test_train_plugins import write_config

    path = write_config(tiny_dir, tmp_path, out=tmp_path / "out")
    overrides = ["one_model.train_mode=2", "trainer.lr_sched=constant", "trainer.init_lr=0.01", "trainer.warmup_steps=0",
                 "trainer.max_epoch=1", "trainer.iters_per_epoch=25", "data.train.phrase_tst=0", "trainer.amp=true"]
    result = train(load_config(path, overrides))
    assert result.skipped == 0 and result.last_loss < 0.3 * result.first_loss, (result.first_loss, result.last_loss)
    params = [p for p in result.model.parameters() if p.requires_grad]
    assert params and all(p.device.type == "cuda" and p.dtype == torch.float32 for p in params)


def test_the_default_model_answers_on_cuda_as_on_cpu(tmp_path):
    """The shipped default model on the GPU: the same greedy answers as on the CPU, masks that agree, and a
    picture for the demo's drawing request."""
    import numpy as np

    from omniplug.data.world import write_split
    from omniplug.infer.pipeline import Pipeline, Request

    config = REPO / "configs" / "default" / "omni_tiny.yaml"
    write_split(out_dir=tmp_path / "w", n=2, seed=999, split="val")
    images = [tmp_path / "w" / "images" / f"00000{i}.png" for i in range(2)]
    requests = [Request("Describe the image.", [images[0]]), Request("Please segment the sky.", [images[1]]),
                Request("Draw a small red circle.", [])]
    cpu = Pipeline.from_config(config).batch(requests)
    gpu = Pipeline.from_config(config, device="cuda").batch(requests)
    for a, b in zip(cpu, gpu):
        assert a.text == b.text
    assert len(gpu[1].masks) == len(cpu[1].masks) >= 1
    agree = (np.asarray(gpu[1].masks[0].mask) == np.asarray(cpu[1].masks[0].mask)).mean()
    assert agree >= 0.99
    assert len(gpu[2].images) == 1

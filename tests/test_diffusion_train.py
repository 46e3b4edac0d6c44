"""``<gen>`` inside ``one_model``: build from the tiny ``gen.yaml``, train ~50 steps (the diffusion
loss falls), save/load the trainable weights, and generate images through ``OneModel.generate``."""

from __future__ import annotations

import statistics

import pytest
import torch

from omniplug.build import build_dataset, build_model
from omniplug.config import load_config
from omniplug.data.collate import Collator

# 32 px (4x4 latents) and the short chat template keep 50 steps within a few seconds
FAST = ["decoder.tiny_sd.height=32", "decoder.tiny_sd.width=32", "one_model.conv_type=plain",
        "decoder.tiny_sd.num_inference_steps=3"]


@pytest.fixture(scope="module")
def config(tiny_dir):
    return load_config(tiny_dir / "gen.yaml", FAST)


def _fixed_loss(model, batch) -> float:
    """The diffusion loss with the same noise, timesteps and VAE samples every time (and without
    disturbing the training run's random stream)."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(1234)
        model.eval()
        value = model(batch).decoder_losses["gen/diffusion"].item()
        model.train()
    return value


def test_tiny_unet_trains_inside_one_model(config, tmp_path):
    from omniplug.weights import load_trainable, save_trainable

    torch.manual_seed(0)
    model = build_model(config)
    decoder = model.decoders["gen"]
    assert decoder.tokens == ["<gen_0>", "<gen_1>", "<gen_2>", "<gen_3>"] and (decoder.height, decoder.width) == (32, 32)
    batch = Collator(model, max_length=256)([build_dataset(config, "gen_train")[i] for i in range(4)])
    params = [p for p in model.parameters() if p.requires_grad]
    assert any(p is decoder.uncond for p in params) and any(p.requires_grad for p in decoder.unet.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, foreach=True)
    history, terms = {}, set()
    model.train()
    for step in range(50):
        out = model(batch)
        terms |= set(out.decoder_losses)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        if step < 10 or step >= 40:  # measured after the first and the last 10 updates
            history[step] = _fixed_loss(model, batch)
    first = statistics.mean(history[s] for s in range(10))
    last = statistics.mean(history[s] for s in range(40, 50))
    print(f"diffusion loss (fixed noise/timesteps), mean of first 10 steps {first:.4f}, last 10 {last:.4f}")
    assert terms == {"gen/diffusion", "gen/align"}
    assert last < 0.8 * first, (first, last)

    save_trainable(model, tmp_path / "ckpt")
    again = build_model(config)
    load_trainable(again, tmp_path / "ckpt")
    assert torch.equal(again.decoders["gen"].uncond, decoder.uncond)
    assert _fixed_loss(again, batch) == pytest.approx(_fixed_loss(model, batch), abs=1e-6)


def test_generate_through_one_model_returns_pil_images(config):
    """The inference path: the answer's <gen_i> run -> projector -> sampling -> PIL images."""
    model = build_model(config).eval()
    sample = build_dataset(config, "gen_val")[0]
    batch = Collator(model, for_generation=True)([sample, sample])
    gen = model.generate(batch, max_new_tokens=2, answer_prefix="".join(model.decoders["gen"].tokens))
    images = gen.decoder_outputs["gen"]
    assert [len(x) for x in images] == [1, 1]
    assert images[0][0].size == (32, 32) and images[0][0].mode == "RGB"
    assert images[0][0].tobytes() == images[1][0].tobytes()  # same prompt, same seed -> same image


def test_evaluate_generation_reports_token_rate(config):
    from omniplug.eval.generation import evaluate_generation

    model = build_model(config)
    result = evaluate_generation(model, build_dataset(config, "gen_val"), max_samples=2, batch_size=2, max_new_tokens=1)
    assert result["samples"] == 2 and result["token_rate"] == 1.0  # forced trigger tokens: every sample has an image


def test_content_term_through_yaml_reaches_the_llm_side(tiny_dir, tmp_path):
    """``decoder: content_weight`` set in YAML: the one model reports ``gen/content``, its gradient reaches the
    output projector, and the read-out head is saved and loaded with the trainable weights."""
    from omniplug.weights import load_trainable, save_trainable

    config = load_config(tiny_dir / "gen.yaml", [*FAST, "decoder.tiny_sd.content_weight=1.0"])
    torch.manual_seed(0)
    model = build_model(config).train()
    batch = Collator(model, max_length=256)([build_dataset(config, "gen_train")[i] for i in range(2)])
    out = model(batch)
    assert "gen/content" in out.decoder_losses and out.decoder_losses["gen/content"] > 0
    out.decoder_losses["gen/content"].backward()
    head = model.decoders["gen"].content_head
    assert head.weight.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.out_projectors["gen"].parameters())
    save_trainable(model, tmp_path / "ckpt")
    again = build_model(config)
    load_trainable(again, tmp_path / "ckpt")
    assert torch.equal(again.decoders["gen"].content_head.weight, head.weight)

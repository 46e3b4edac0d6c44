"""bench/cuda/scale.py's planning and file handling (its GPU run is a benchmark, recorded in bench/cuda/README.md):
which batch it picks for a time budget, the scaled config it trains, and the weights split into files a lent
machine can return and joined back."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

REPO = Path(__file__).resolve().parents[1]


def _scale():
    spec = importlib.util.spec_from_file_location("scale", REPO / "bench" / "cuda" / "scale.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_choose_takes_the_most_samples_that_keep_enough_steps():
    scale = _scale()
    rates = {16: 5.0, 64: 4.0, 256: 2.0}  # steps/s; in 400 s: 2,000 / 1,600 / 800 steps
    assert scale.choose(rates, 400, min_steps=800) == (256, 800)  # 204,800 samples
    assert scale.choose(rates, 400, min_steps=1000) == (64, 1600)  # 256 would stop at 800 steps
    assert scale.choose(rates, 10, min_steps=1000) == (16, 100)  # nothing fits: the smallest batch, 100 steps


def test_scaled_config_keeps_the_recipe_and_scales_its_curriculum(tmp_path):
    from omniplug.config import load_config

    scale = _scale()
    path = scale.scaled_config(batch=64, steps=1250, workers=3, out_dir=tmp_path / "run")
    try:
        config = load_config(path)
        default = load_config(REPO / "configs" / "default" / "omni_tiny.yaml")
    finally:
        path.unlink()
    assert config.one_model.weights is None and config.data.eval == []
    assert [phase["until_step"] for phase in config.data.schedule] == [150, 400]  # 600 and 1,600 of 5,000
    assert [phase["train"] for phase in config.data.schedule] == [phase["train"] for phase in default.data.schedule]
    tc = config.trainer
    assert (tc.batch_size_train, tc.iters_per_epoch, tc.num_workers, tc.save_every) == (64, 1250, 3, 250)
    assert config.data.train == default.data.train and tc.init_lr == default.trainer.init_lr


def test_weights_split_into_balanced_parts_and_join_back_exactly(tmp_path):
    scale = _scale()
    torch.manual_seed(0)
    tensors = {f"layer{i}.weight": torch.randn(n) for i, n in enumerate([4000, 3000, 2000, 1000, 500, 500, 10])}
    save_file(tensors, str(tmp_path / "trainable.safetensors"))
    out = tmp_path / "out"
    out.mkdir()
    scale.split_weights(tmp_path / "trainable.safetensors", out)
    parts = sorted(out.glob("weights_*of2.safetensors"))
    sizes = [sum(t.numel() for t in load_file(str(p)).values()) for p in parts]
    assert len(parts) == 2 and max(sizes) <= 0.55 * sum(sizes)  # each part about half: both under a size limit
    scale.join_weights(out)
    joined = load_file(str(out / "trainable.safetensors"))
    assert joined.keys() == tensors.keys() and all(torch.equal(joined[k], tensors[k]) for k in tensors)

"""Contract tests over every registered plugin: build from YAML-shaped settings, forward, backward,
save/load round trip. A new plugin without a case here fails ``test_every_plugin_has_a_case``.

Decoders are exercised inside ``one_model`` (tiny CLIP + tiny Llama) with a sample their case
provides, because a decoder only makes sense behind the LLM's task tokens.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from omniplug.build import build_entry, build_model
from omniplug.config import EntryConfig
from omniplug.data.collate import Collator
from omniplug.registry import REGISTRIES, load_builtin_plugins

load_builtin_plugins()

#: (kind, alias) -> settings factory (tiny_dir -> dict). Decoder cases live in DECODER_CASES.
CASES = {
    ("encoder", "clip"): lambda d: {"model_name_or_path": str(d / "clip"), "freeze": False},
    ("encoder", "llava_vision"): lambda d: {"model_name_or_path": str(d / "llava"), "freeze": False},
    ("encoder", "cells"): lambda d: {"from_scratch": True, "dim": 16, "image_size": 32, "cell": 8},
    ("encoder", "state"): lambda d: {"from_scratch": True, "state_dim": 3, "dim": 16, "image_size": 32},
    ("projector", "linear"): lambda d: {"in_features": 64, "out_features": 32},
    ("projector", "mlp"): lambda d: {"in_features": 64, "out_features": 32, "depth": 2, "activation": "relu"},
    ("projector", "llava"): lambda d: {"model_name_or_path": str(d / "llava")},
    ("projector", "gen_transformer"): lambda d: {"in_features": 64, "out_features": 32, "num_queries": 5, "width": 32,
                                                 "heads": 4, "depth": 1},
    ("tokenizer", "hf"): lambda d: {"model_name_or_path": str(d / "llama")},
    ("llm", "hf_causal_lm"): lambda d: {"model_name_or_path": str(d / "llama")},
    ("llm", "llava"): lambda d: {"model_name_or_path": str(d / "llava")},
}

#: decoder alias -> (settings factory, sample factory(image) -> Sample). Tests of decoders add theirs.
DECODER_CASES: dict = {}


def _register_decoder_cases() -> None:
    import importlib
    import pkgutil

    import tests as _tests  # noqa: F401  (tests is a package: conftest lives beside)

    for info in pkgutil.iter_modules(_tests.__path__):
        if info.name.startswith("contract_"):
            module = importlib.import_module(f"tests.{info.name}")
            DECODER_CASES.update(getattr(module, "DECODER_CASES", {}))


def _build(kind: str, alias: str, tiny_dir):
    entry = EntryConfig(section=kind, name=f"test_{alias}", type=alias, params=CASES[(kind, alias)](tiny_dir),
                        source="test")
    return build_entry(entry)


def _images(n=2):
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)) for _ in range(n)]


def _round_trip(module, make, tmp_path):
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(tmp_path / "m.safetensors"))
    fresh = make()
    with torch.no_grad():
        for p in fresh.parameters():
            p.add_(1.0)  # make sure loading really overwrites
    fresh.load_state_dict(load_file(str(tmp_path / "m.safetensors")))
    return fresh


def test_every_plugin_has_a_case():
    _register_decoder_cases()
    missing = []
    for kind in ("encoder", "projector", "tokenizer", "llm"):
        missing += [f"{kind}.{a}" for a in REGISTRIES[kind].names() if (kind, a) not in CASES]
    missing += [f"decoder.{a}" for a in REGISTRIES["decoder"].names()
                if a not in DECODER_CASES and not a.startswith("test_")]
    assert not missing, f"add contract cases for: {missing}"


@pytest.mark.parametrize("alias", sorted(a for k, a in CASES if k == "encoder"))
def test_encoder_contract(alias, tiny_dir, tmp_path):
    enc = _build("encoder", alias, tiny_dir)
    pixels = enc.preprocess(_images())
    feats = enc(pixels)
    assert feats.tokens.shape == (2, enc.num_tokens, enc.out_dim)
    feats.tokens.sum().backward()
    assert any(p.grad is not None for p in enc.parameters())
    again = _round_trip(enc, lambda: _build("encoder", alias, tiny_dir), tmp_path)
    with torch.no_grad():
        assert torch.equal(again(pixels).tokens, enc(pixels).tokens)


@pytest.mark.parametrize("alias", sorted(a for k, a in CASES if k == "projector"))
def test_projector_contract(alias, tiny_dir, tmp_path):
    proj = _build("projector", alias, tiny_dir)
    x = torch.randn(2, 5, proj.in_features, requires_grad=True)
    y = proj(x)
    assert y.shape == (2, 5, proj.out_features)
    y.sum().backward()
    assert x.grad is not None
    again = _round_trip(proj, lambda: _build("projector", alias, tiny_dir), tmp_path)
    assert torch.equal(again(x), proj(x))


def test_tokenizer_contract(tiny_dir, tmp_path):
    tok = _build("tokenizer", "hf", tiny_dir)
    n = len(tok)
    ids = tok.add_special_tokens(["<seg>", "<image>"])
    assert len(tok) == n + 2 and ids == [tok.token_id("<seg>"), tok.token_id("<image>")]
    text = "segment the red circle"
    assert tok.decode(tok.encode(text, special=False)) == text
    assert tok.encode("<seg>", special=True) == [ids[0]]
    assert ids[0] not in tok.encode("<seg>", special=False)
    tok.save(str(tmp_path / "tok"))
    again = build_entry(EntryConfig(section="tokenizer", name="t", type="hf",
                                    params={"model_name_or_path": str(tmp_path / "tok")}, source="test"))
    assert again.encode("It is <seg>.", special=True) == tok.encode("It is <seg>.", special=True)


@pytest.mark.parametrize("alias", sorted(a for k, a in CASES if k == "llm"))
def test_llm_contract(alias, tiny_dir, tmp_path):
    llm = _build("llm", alias, tiny_dir).eval()
    ids = torch.tensor([[1, 5, 9, 12], [1, 7, 3, 3]])
    mask = torch.ones_like(ids)
    labels = ids.clone()
    out = llm(llm.embed(ids), mask, labels=labels)
    assert out.hidden_states.shape == (2, 4, llm.hidden_size) and out.loss.ndim == 0
    out.loss.backward()
    assert any(p.grad is not None for p in llm.parameters())
    gen = llm.generate(llm.embed(ids), mask, max_new_tokens=3, eos_token_id=2, pad_token_id=0)
    assert gen.sequences.shape[0] == 2 and (gen.lengths <= 3).all()
    again = _round_trip(llm, lambda: _build("llm", alias, tiny_dir), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(again(again.embed(ids), mask).logits, llm(llm.embed(ids), mask).logits)


def _decoder_ids():
    _register_decoder_cases()
    return sorted(DECODER_CASES)


@pytest.mark.parametrize("alias", _decoder_ids())
def test_decoder_contract_inside_one_model(alias, tiny_dir, tmp_path):
    from omniplug.weights import load_trainable, save_trainable

    settings, make_sample = DECODER_CASES[alias]
    import yaml

    cfg = {
        "includes": [str(tiny_dir / "catalogue.yaml")],
        "decoder": {"dec": {"type": alias, **settings(tiny_dir)}},
        "one_model": {"encoder": "tiny_clip", "in_projector": "image_proj", "tokenizer": "tiny_tok",
                      "llm": "tiny_llama", "decoder": "dec", "out_projector": "out_mlp", "train_mode": 1},
    }
    path = tmp_path / "dec.yaml"
    path.write_text(yaml.safe_dump(cfg))
    model = build_model(path).eval()
    batch = Collator(model)([make_sample(img) for img in _images()])
    out = model(batch)
    assert out.decoder_losses, "the decoder produced no loss"
    out.loss.backward()
    task = next(iter(model.decoders))
    assert any(p.grad is not None for p in model.decoders[task].parameters() if p.requires_grad) or \
        any(p.grad is not None for p in (model.out_projectors[task] if task in model.out_projectors else model.llm).parameters())
    save_trainable(model, tmp_path / "ckpt")
    again = build_model(path).eval()
    load_trainable(again, tmp_path / "ckpt")
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(batch).loss
        torch.manual_seed(0)
        b = again(batch).loss
    assert torch.equal(a, b)

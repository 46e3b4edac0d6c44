"""Bad input is refused with a clear message and nothing is executed."""

from __future__ import annotations

import io
import json
import pickle
from contextlib import redirect_stderr, redirect_stdout

import pytest
import torch

from omniplug.build import build_entry, build_model
from omniplug.cli import main
from omniplug.config import EntryConfig
from omniplug.config.schema import ConfigError


def _proj(ckpt):
    params = {"in_features": 4, "out_features": 3, "ckpt_path": str(ckpt)}
    return build_entry(EntryConfig(section="projector", name="p", type="linear", params=params, source="x.yaml"))


def test_missing_checkpoint_path(tiny_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text((tiny_dir / "composed.yaml").read_text().replace("catalogue.yaml", str(tiny_dir / "catalogue.yaml")))
    with pytest.raises(ConfigError, match="checkpoint directory not found: /nope/llama.*no hub downloads"):
        build_model(cfg, ["base_dir=/nope"])


def test_llava_style_projector_file_loads(tmp_path):
    state = {"model.mm_projector.weight": torch.randn(3, 4), "model.mm_projector.bias": torch.randn(3)}
    torch.save(state, tmp_path / "mm_projector.bin")
    proj = _proj(tmp_path / "mm_projector.bin")
    assert torch.equal(proj.layers.weight, state["model.mm_projector.weight"])
    mlp_state = {"model.mm_projector.0.weight": torch.randn(3, 4), "model.mm_projector.0.bias": torch.randn(3),
                 "model.mm_projector.2.weight": torch.randn(3, 3), "model.mm_projector.2.bias": torch.randn(3)}
    torch.save(mlp_state, tmp_path / "mlp.pt")
    mlp = build_entry(EntryConfig(section="projector", name="p", type="mlp", source="x.yaml",
                                  params={"in_features": 4, "out_features": 3, "ckpt_path": str(tmp_path / "mlp.pt")}))
    assert torch.equal(mlp.layers[2].weight, mlp_state["model.mm_projector.2.weight"])


def test_misshaped_projector_file_names_tensor_and_shapes(tmp_path):
    torch.save({"model.mm_projector.weight": torch.randn(5, 4), "model.mm_projector.bias": torch.randn(5)},
               tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match=r"tensor 'weight'.*shape \(5, 4\), expected \(3, 4\)"):
        _proj(tmp_path / "bad.pt")


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch " + str(_Evil.marker),))


def test_pickle_that_runs_code_is_refused(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"model.mm_projector.weight": _Evil()}, f)
    with pytest.raises(ConfigError, match="refusing to load.*safetensors"):
        _proj(tmp_path / "evil.bin")
    assert not _Evil.marker.exists()


def test_corrupt_weight_file(tmp_path):
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(Exception):
        _proj(tmp_path / "junk.safetensors")
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ConfigError, match="cannot read|refusing"):
        _proj(tmp_path / "junk.pt")


def test_cli_reports_config_errors_without_traceback(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("one_model: {tokenizer: t, llm: l}\nllm: {l: {type: hf_causal_lm, model_name_or_path: /x, lora_rank: 4}}\n")
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["inspect", "-c", str(cfg)])
    assert code == 2
    assert "unknown key 'lora_rank'" in err.getvalue() and "Traceback" not in err.getvalue()


def test_cli_plugins_json():
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["plugins", "--json"]) == 0
    table = json.loads(out.getvalue())
    assert "clip" in table["encoder"] and "hf_causal_lm" in table["llm"]


def test_cli_tiny_then_inspect(tmp_path):
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["tiny", "--out", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "composed.yaml").is_file() and (tmp_path / "t" / "llava.yaml").is_file()
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["inspect", "-c", str(tmp_path / "t" / "composed.yaml"), "--json"]) == 0
    info = json.loads(out.getvalue())
    assert info["modules"]["llm"]["type"] == "hf_causal_lm" and info["total_params"] > 0

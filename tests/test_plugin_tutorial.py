"""docs/plugins.md's code, run as written: the tutorial decoder registers, builds from its YAML inside a tiny
model, trains a step, round-trips its weights, and a misspelt key fails as the page says."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

from omniplug.registry import DECODERS

PAGE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", PAGE.read_text(), flags=re.S)


@pytest.fixture
def tutorial(tmp_path, monkeypatch, tiny_dir):
    """The page's plugin module written as my_plugins/center_point.py and imported; its YAML beside the tiny
    catalogue. The registry is restored afterwards (the contract tests require a case per registered decoder)."""
    monkeypatch.setattr(DECODERS, "_entries", dict(DECODERS._entries))
    plugin, _ = _blocks("python")
    package = tmp_path / "my_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "center_point.py").write_text(plugin)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "my_plugins.center_point", raising=False)
    module = importlib.import_module("my_plugins.center_point")
    (yaml_text,) = _blocks("yaml")
    config = tmp_path / "point.yaml"
    config.write_text(f"includes: [{tiny_dir / 'catalogue.yaml'}]\n" + yaml_text)
    return module, config


def test_the_tutorial_decoder_trains_inside_a_tiny_model(tutorial, tmp_path):
    import torch

    from omniplug.build import build_model
    from omniplug.weights import load_trainable, save_trainable

    module, config = tutorial
    _, run = _blocks("python")
    scope = {"config_path": config}
    exec(compile(run, str(PAGE), "exec"), scope)
    out, model = scope["out"], scope["model"]
    assert set(out.decoder_losses) == {"point/l1"} and torch.isfinite(out.loss)
    assert isinstance(model.decoders["point"], module.CenterPointDecoder)
    assert model.tokenizer.token_id("<pt>") >= 0
    assert any(p.grad is not None for p in model.decoders["point"].parameters())
    save_trainable(model, tmp_path / "run")
    again = build_model(config)
    load_trainable(again, tmp_path / "run")
    assert torch.equal(again.decoders["point"].head[0].weight, model.decoders["point"].head[0].weight)


def test_a_misspelt_key_fails_as_the_page_says(tutorial):
    from omniplug.config import ConfigError, load_config

    _, config = tutorial
    config.write_text(config.read_text().replace("width: 32", "widht: 32"))
    quoted = re.search(r"`point\.yaml: (decoder\.centre: unknown key 'widht'[^`]*)`", PAGE.read_text()).group(1)
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == f"{config}: {quoted}"

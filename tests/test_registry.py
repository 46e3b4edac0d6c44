"""Registries: aliases, duplicates, unknown names, out-of-tree plugins."""

from __future__ import annotations

import sys
import types

import pytest
from torch import nn

from omniplug.registry import DECODERS, ENCODERS, REGISTRIES, Registry, RegistryError, load_builtin_plugins


def test_builtin_plugins_registered():
    load_builtin_plugins()
    assert {"clip", "llava_vision"} <= set(ENCODERS.names())
    assert {"linear", "mlp", "llava"} <= set(REGISTRIES["projector"].names())
    assert "hf" in REGISTRIES["tokenizer"].names()
    assert {"hf_causal_lm", "llava"} <= set(REGISTRIES["llm"].names())


def test_duplicate_alias_refused():
    reg: Registry = Registry("thing")

    @reg.register("a")
    class A:  # noqa: D401
        pass

    with pytest.raises(RegistryError, match="already registered"):
        @reg.register("a")
        class B:
            pass

    assert reg.get("a") is A


def test_unknown_alias_lists_available():
    load_builtin_plugins()
    with pytest.raises(RegistryError, match="unknown encoder 'clipp'; available: .*clip"):
        ENCODERS.get("clipp")


def test_out_of_tree_module_path():
    mod = types.ModuleType("my_oot_plugin")

    class MyDecoder(nn.Module):
        pass

    mod.MyDecoder = MyDecoder
    sys.modules["my_oot_plugin"] = mod
    try:
        assert DECODERS.get("my_oot_plugin:MyDecoder") is MyDecoder
        with pytest.raises(RegistryError, match="has no attribute"):
            DECODERS.get("my_oot_plugin:Nope")
        with pytest.raises(RegistryError, match="cannot import"):
            DECODERS.get("no_such_module_xyz:Thing")
    finally:
        del sys.modules["my_oot_plugin"]


def test_entry_point_plugins(monkeypatch):
    from importlib import metadata

    class FakeEP:
        name = "decoder.fancy_boxes"

        def load(self):
            return FancyBoxes

    class FancyBoxes(nn.Module):
        pass

    reg: Registry = Registry("decoder")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [FakeEP()] if group == "omniplug.plugins" else [])
    assert reg.get("fancy_boxes") is FancyBoxes
    assert "fancy_boxes" in reg.names()


def test_module_entry_points_have_every_command():
    """`python -m omniplug` and `python -m omniplug.cli` are the `omniplug` command, feature commands
    included (run as __main__, cli.py once lost `eval`, `train`, ...: they register with omniplug.cli)."""
    import subprocess
    import sys

    for module in ("omniplug", "omniplug.cli"):
        out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        for name in ("train", "eval", "infer", "world", "demo"):
            assert name in out.stdout, (module, name, out.stdout)

"""Shared fixtures: tiny random checkpoints of the real classes, written once per session and
loaded back through YAML by the tests (the real loading code is what is tested)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(os.path.expanduser("~"), ".cache", "omniplug-torch-ext"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)  # tiny models: threads only add overhead on a shared 2-core machine


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    from omniplug.fixtures.tiny import write_all

    out = tmp_path_factory.mktemp("tiny")
    write_all(out)
    return out


@pytest.fixture
def write_yaml(tmp_path):
    """Write a YAML string to a file in tmp_path and return its path."""
    counter = {"n": 0}

    def _write(text: str, name: str | None = None):
        counter["n"] += 1
        path = tmp_path / (name or f"config{counter['n']}.yaml")
        path.write_text(text)
        return path

    return _write

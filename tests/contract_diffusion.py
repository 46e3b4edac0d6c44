"""Contract case for the ``diffusion`` decoder (picked up by tests/test_contracts.py)."""

from __future__ import annotations

from omniplug.data.conversation import Turn
from omniplug.data.generation import GenerationTarget
from omniplug.data.sample import Sample


def _settings(tiny_dir):
    return {"model_name_or_path": str(tiny_dir / "sd"), "num_tokens": 2, "num_inference_steps": 2}


def _sample(image):
    return Sample(turns=[Turn("user", "Draw a red circle."), Turn("assistant", "Here: <gen_0><gen_1>")],
                  targets={"gen": [GenerationTarget(image=image, caption="a red circle")]})


DECODER_CASES = {"diffusion": (_settings, _sample)}

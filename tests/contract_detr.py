"""Contract case for the ``detr`` decoder (picked up by tests/test_contracts.py)."""

from __future__ import annotations

from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.types import Box


def _settings(tiny_dir):
    return {"model_name_or_path": str(tiny_dir / "detr")}


def _sample(image):
    circles = [Box(xyxy=(5, 5, 20, 18), label="circle"), Box(xyxy=(30, 10, 48, 30), label="circle")]
    return Sample(turns=[Turn("user", "Detect every circle, then every square.", images=1),
                         Turn("assistant", "circles: <det>, squares: <det>.")],
                  images=[image], targets={"det": [circles, []]})  # the image has no square


DECODER_CASES = {"detr": (_settings, _sample)}

"""Contract case for the ``sam`` decoder (picked up by tests/test_contracts.py)."""

from __future__ import annotations

import numpy as np

from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample


def _settings(tiny_dir):
    return {"model_name_or_path": str(tiny_dir / "sam")}


def _sample(image):
    first = np.zeros((image.height, image.width), dtype=bool)
    first[5:20, 10:30] = True
    empty = np.zeros((image.height, image.width), dtype=bool)  # an absent object
    return Sample(turns=[Turn("user", "Please segment the red circle and the cat.", images=1),
                         Turn("assistant", "the red circle: <seg>, the cat: <seg>.")],
                  images=[image], targets={"seg": [first, empty]})


DECODER_CASES = {"sam": (_settings, _sample)}

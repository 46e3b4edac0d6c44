"""Contract cases for the action decoders (picked up by tests/test_contracts.py). Token adapters
get ``token_loss_weight`` so that they report a loss term of their own."""

from __future__ import annotations

import numpy as np

from omniplug.actions.space import ActionTarget
from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample


def _demos(kind):
    return lambda tiny_dir: {"demos": str(tiny_dir / "act_demos" / kind)}


def _with(kind, **extra):
    return lambda tiny_dir: {**_demos(kind)(tiny_dir), **extra}


def _discrete(image):
    return Sample(turns=[Turn("user", "go to the red ball", images=1), Turn("assistant", "<act>")], images=[image],
                  targets={"act": [ActionTarget(future=np.array([2, 0, 3]))]})


def _continuous(image):
    return Sample(turns=[Turn("user", "reach the target", images=1), Turn("assistant", "<act>")], images=[image],
                  targets={"act": [ActionTarget(future=np.array([[0.3, -1.0], [0.1, 0.5]], dtype=np.float32))]})


DECODER_CASES = {
    "act_words": (_with("discrete", token_loss_weight=1.0, chunk=2), _discrete),
    "act_tokens": (_with("discrete", token_loss_weight=1.0), _discrete),
    "act_bins": (_with("continuous", token_loss_weight=1.0, num_bins=16, chunk=2), _continuous),
    "act_rvq": (_with("continuous", token_loss_weight=1.0, codebook_size=8), _continuous),
    "act_regress": (_with("continuous", prompt_dim=32, hidden_dim=32), _continuous),
}

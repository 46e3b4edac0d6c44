"""Contract case for the ``video_diffusion`` decoder (picked up by tests/test_contracts.py)."""

from __future__ import annotations

from omniplug.data.conversation import Turn
from omniplug.data.sample import Sample
from omniplug.decoders.video_diffusion import ClipTarget


def _settings(tiny_dir):
    return {"model_name_or_path": str(tiny_dir / "vid"), "num_tokens": 2, "num_frames": 4, "num_inference_steps": 2}


def _sample(image):
    frames = [image.rotate(15 * t) for t in range(4)]
    return Sample(turns=[Turn("user", "Make a clip of a red circle moving left."), Turn("assistant", "<vid_0><vid_1>")],
                  targets={"vid": [ClipTarget(frames=frames, caption="A red circle moves left.")]})


DECODER_CASES = {"video_diffusion": (_settings, _sample)}

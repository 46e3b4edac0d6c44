"""Language-driven editing end to end (tiny ``edit.yaml``): one answer holds ``<seg>`` (SAM: the
region) and the generation tokens (SD: the content); the seg decoder's mask reaches the diffusion
decoder through ``DecoderInput.context`` and only pixels inside it change."""

from __future__ import annotations

import numpy as np
import pytest

from omniplug.build import build_dataset, build_model
from omniplug.config import load_config
from omniplug.data.collate import Collator

FAST = ["decoder.tiny_sd.num_inference_steps=2", "one_model.conv_type=plain"]


@pytest.fixture(scope="module")
def model_and_config(tiny_dir):
    if not (tiny_dir / "edit.yaml").is_file():
        pytest.skip("edit.yaml needs the tiny SAM checkpoint (omniplug.fixtures.tiny_sam)")
    config = load_config(tiny_dir / "edit.yaml", FAST)
    return build_model(config), config


def test_edit_training_step_has_seg_and_gen_losses(model_and_config):
    model, config = model_and_config
    data = build_dataset(config, "edit_train")
    batch = Collator(model)([data[0], data[1]])
    out = model.train()(batch)
    assert {"seg", "gen"} <= {k.split("/")[0] for k in out.decoder_losses}
    out.loss.backward()
    assert model.out_projectors["gen"].output.weight.grad is not None


def test_one_request_gives_the_mask_and_the_edited_image(model_and_config):
    model, config = model_and_config
    model.eval()
    sample = build_dataset(config, "edit_train")[0]
    source = sample.images[0].resize((48, 40))  # the decoder works at 64x64; the edit comes back at 48x40
    sample.images[0], sample.targets = source, {}
    batch = Collator(model, for_generation=True)([sample])
    gen = model.generate(batch, max_new_tokens=1, answer_prefix="<seg> " + "".join(model.decoders["gen"].tokens))
    (mask,), (edited,) = gen.decoder_outputs["seg"][0], gen.decoder_outputs["gen"][0]
    region = np.asarray(mask.mask, dtype=bool)
    assert region.shape == (40, 48) and edited.size == (48, 40)
    assert 0 < region.mean() < 1  # the tiny random SAM gives a partial mask (about 20 %), so this is a real check
    before, after = np.asarray(source), np.asarray(edited)
    assert np.array_equal(before[~region], after[~region])  # outside the <seg> mask: unchanged, exactly


def test_gen_without_seg_in_the_answer_is_a_plain_generation(model_and_config):
    model, config = model_and_config
    sample = build_dataset(config, "edit_train")[0]
    sample.images[0], sample.targets = sample.images[0].resize((48, 40)), {}
    gen = model.eval().generate(Collator(model, for_generation=True)([sample]), max_new_tokens=1,
                                answer_prefix="".join(model.decoders["gen"].tokens))
    assert gen.decoder_outputs["seg"] == [[]] and gen.decoder_outputs["gen"][0][0].size == (64, 64)

"""Decoder ``detr`` on a tiny random DetrForObjectDetection: parity with transformers' own forward and
post-processing, the set loss (empty targets included), and bad input."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from omniplug.types import Box, DecoderInput


@pytest.fixture(scope="module")
def detr(tiny_dir):
    from omniplug.decoders.detr import DetrDecoder

    return DetrDecoder(model_name_or_path=str(tiny_dir / "detr"), score_threshold=0.0)


def _images():
    a = Image.new("RGB", (64, 48), (200, 200, 200))
    a.paste((220, 40, 40), (8, 8, 30, 30))
    b = Image.new("RGB", (64, 64), (120, 120, 120))
    b.paste((50, 80, 220), (30, 20, 60, 50))
    return [a, b]


def _input(decoder, images, prompts, batch_index):
    return DecoderInput(prompts=prompts, batch_index=torch.tensor(batch_index), batch_size=len(images),
                        pixels=decoder.prepare_images(images))


def test_boxes_equal_transformers_forward_and_post_processing(detr, tiny_dir):
    """The same images and query contents through DetrForObjectDetection + DetrImageProcessorPil's
    post_process_object_detection give the decoder's boxes, labels and scores."""
    from transformers import DetrForObjectDetection, DetrImageProcessorPil

    torch.manual_seed(0)
    images = _images()
    prompts = torch.randn(3, 1, detr.prompt_dim)
    batch_index = [0, 1, 1]
    detr.eval()
    with torch.no_grad():
        out = detr(_input(detr, images, prompts, batch_index))
    ours = detr.postprocess(out)

    ref_model = DetrForObjectDetection.from_pretrained(str(tiny_dir / "detr")).eval()
    processor = DetrImageProcessorPil.from_pretrained(str(tiny_dir / "detr"))
    inputs = processor(images=images, return_tensors="pt")
    rows = torch.tensor(batch_index)
    with torch.no_grad():
        ref = ref_model(pixel_values=inputs["pixel_values"][rows], pixel_mask=inputs["pixel_mask"][rows],
                        decoder_inputs_embeds=prompts.expand(-1, detr.num_queries, -1))
    sizes = [(images[b].height, images[b].width) for b in batch_index]
    expected = processor.post_process_object_detection(ref, threshold=0.0, target_sizes=sizes)
    worst = 0.0
    for got, want in zip(ours, expected):
        order = want["scores"].argsort(descending=True)
        assert [b.label for b in got] == [detr.labels[int(i)] for i in want["labels"][order]]
        worst = max(worst, float((torch.tensor([b.score for b in got]) - want["scores"][order]).abs().max()),
                    float((torch.tensor([b.xyxy for b in got]) - want["boxes"][order]).abs().max()))
    assert len(ours) == 3 and all(len(b) == detr.num_queries for b in ours)
    assert worst < 1e-4, worst  # max abs difference of scores and pixel corners


def test_set_loss_falls_and_empty_targets_train(tiny_dir):
    """A few dozen steps on fixed prompts fit one box per prompt and 'none' for an empty target."""
    from omniplug.decoders.detr import DetrDecoder

    torch.manual_seed(0)
    decoder = DetrDecoder(model_name_or_path=str(tiny_dir / "detr"))
    decoder.set_trainable()
    images = _images()
    prompts = torch.nn.Parameter(torch.randn(3, 1, decoder.prompt_dim))
    raw = [[Box(xyxy=(8, 8, 30, 30), label="square")], [Box(xyxy=(30, 20, 60, 50), label="square")], []]
    targets = [decoder.prepare_target(t, images[b]) for t, b in zip(raw, [0, 1, 1])]
    assert targets[2].boxes.shape == (0, 4)
    opt = torch.optim.Adam([*decoder.parameters(), prompts], lr=3e-3)
    losses = []
    for _ in range(60):
        out = decoder(_input(decoder, images, prompts, [0, 1, 1]))
        loss = sum(decoder.loss(out, targets).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], losses[::10]
    decoder.eval()
    with torch.no_grad():
        counts = decoder.validation_counts(decoder(_input(decoder, images, prompts, [0, 1, 1])), targets)
    assert counts["recall50"] == (2.0, 2.0), counts


def test_bad_targets_and_images_get_clear_errors(detr):
    image = Image.new("RGB", (64, 48))
    for box, match in [(Box(xyxy=(10, 10, 10, 20), label="circle"), "degenerate"),
                       (Box(xyxy=(40, 10, 80, 30), label="circle"), "outside its 64x48 image"),
                       (Box(xyxy=(1, 1, 9, 9), label="hexagon"), "not a class of the checkpoint; its classes: circle")]:
        with pytest.raises(ValueError, match=match):
            detr.prepare_target([box], image)
    with pytest.raises(ValueError, match="list of Box"):
        detr.prepare_target(Box(xyxy=(1, 1, 9, 9), label="circle"), image)
    with pytest.raises(ValueError, match="need the sample's image"):
        detr.prepare_target([Box(xyxy=(1, 1, 9, 9), label="circle")], None)
    with pytest.raises(ValueError, match="no pixels"):
        detr.prepare_images([Image.new("RGB", (0, 0))])
    with pytest.raises(ValueError, match="no images for this batch"):
        detr(DecoderInput(prompts=torch.zeros(1, 1, detr.prompt_dim), batch_index=torch.tensor([0]), batch_size=1))


def test_a_timm_backbone_checkpoint_is_refused_before_loading(tiny_dir, tmp_path):
    import shutil

    from omniplug.decoders.detr import DetrDecoder

    folder = tmp_path / "detr_timm"
    shutil.copytree(tiny_dir / "detr", folder)
    config = json.loads((folder / "config.json").read_text())
    config["use_timm_backbone"] = True
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="use_timm_backbone: false"):
        DetrDecoder(model_name_or_path=str(folder))


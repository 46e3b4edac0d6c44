"""Generation scores: the world's analyser on world renders, CLIP score and CLIP-feature FID with a
tiny local CLIPModel."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from omniplug.eval.generation import clip_fid, clip_score, world_accuracy


def test_world_accuracy_reads_back_renders_and_rejects_blank_images():
    from omniplug.data.world.render import render_scene
    from omniplug.data.world.scene import WorldConfig, sample_scene

    scenes = [sample_scene(config=WorldConfig(), seed=0, split="train", index=i, stream="generation") for i in range(3)]
    renders = [render_scene(s).image for s in scenes]
    perfect = world_accuracy(renders, scenes=[s.to_json() for s in scenes])  # JSON as in generation.jsonl
    assert perfect.samples == 3 and perfect.recall > 0.6 and perfect.precision > 0.6
    blank = world_accuracy([np.full_like(renders[0], 255)] * 3, scenes=scenes)
    assert blank.recall == 0.0 and blank.exact == 0.0
    assert set(perfect.as_dict()) == {"world_exact", "world_precision", "world_recall", "world_f1", "world_samples"}
    with pytest.raises(ValueError, match="scene or a caption"):
        world_accuracy(renders[:1])


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    import torch
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, CLIPTextConfig, CLIPVisionConfig

    from omniplug.fixtures.tiny import _CORPUS, train_tokenizer

    out = tmp_path_factory.mktemp("clip_full")
    tok = train_tokenizer(_CORPUS)
    text = CLIPTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, max_position_embeddings=77, pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)).save_pretrained(out)
    CLIPProcessor(image_processor=CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(out)
    return str(out)


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(n)]


def test_clip_score_and_clip_fid(clip_dir):
    pytest.importorskip("torchmetrics")
    images = _images(4)
    score = clip_score(images, ["a red circle", "a blue square", "a house", "a car"], clip_dir=clip_dir)
    assert 0.0 <= score <= 100.0
    assert clip_score(images[:2], ["a red circle"] * 2, clip_dir=clip_dir, batch_size=1) == pytest.approx(
        clip_score(images[:2], ["a red circle"] * 2, clip_dir=clip_dir), abs=1e-4)
    same = clip_fid(images, images, clip_dir=clip_dir)
    other = clip_fid(images, _images(4, seed=1)[:2] + [Image.new("RGB", (40, 40), (255, 0, 0))] * 2, clip_dir=clip_dir)
    assert abs(same) < 1e-3 < other
    with pytest.raises(ValueError, match="at least 2"):
        clip_fid(images[:1], images, clip_dir=clip_dir)

"""Decoder ``sam``: losses against hand computation, multi-<seg> ordering, empty targets, trainability,
and the tiny seg.yaml model end to end (forward, backward, save/load round trip)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.decoders.sam import SamDecoder, SamOutput, dice_loss, sigmoid_bce_loss, upsample_mask
from omniplug.types import DecoderInput, Mask


# --- losses by hand -------------------------------------------------------------------------------
def test_bce_and_dice_match_hand_computation():
    logits = torch.tensor([[[math.log(3.0), 0.0], [-math.log(3.0), 0.0]]])  # p = .75 .5 / .25 .5
    target = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    bce = -(math.log(0.75) + math.log(0.5) + math.log(0.75) + math.log(0.5)) / 4
    assert sigmoid_bce_loss(logits, target).item() == pytest.approx(bce, rel=1e-6)
    # LISA: 1 - (2 sum(p t)/1000 + 1e-6) / ((sum p + sum t)/1000 + 1e-6)
    num = 2 * (0.75 + 0.5) / 1000
    den = (0.75 + 0.5 + 0.25 + 0.5 + 2) / 1000
    assert dice_loss(logits, target).item() == pytest.approx(1 - (num + 1e-6) / (den + 1e-6), rel=1e-6)


def test_dice_of_empty_target():
    empty = torch.zeros(1, 3, 3)
    assert dice_loss(torch.full((1, 3, 3), -30.0), empty).item() == pytest.approx(0.0, abs=1e-3)  # nothing predicted
    assert dice_loss(torch.zeros(1, 3, 3), empty).item() == pytest.approx(1 - 1e-6 / (4.5 / 1000 + 1e-6), rel=1e-6)
    perfect = torch.ones(1, 3, 3)
    assert dice_loss(torch.full((1, 3, 3), 30.0), perfect).item() == pytest.approx(0.0, abs=1e-6)


@pytest.fixture(scope="module")
def sam(tiny_dir):
    torch.manual_seed(0)
    return SamDecoder(model_name_or_path=str(tiny_dir / "sam"))


def test_loss_is_weighted_mean_over_masks(sam):
    a = torch.tensor([[math.log(3.0), 0.0]])  # 1x2 mask
    b = torch.zeros(2, 3)  # 2x3 mask, another image size
    ta, tb = torch.tensor([[1.0, 0.0]]), torch.zeros(2, 3)
    out = SamOutput(batch_index=torch.tensor([0, 1]), mask_logits=[a, b], low_res_logits=torch.zeros(2, 4, 4),
                    scores=torch.zeros(2))
    losses = sam.loss(out, [ta, tb])
    bce_a = -(math.log(0.75) + math.log(0.5)) / 2
    bce_b = math.log(2.0)
    assert losses["bce"].item() == pytest.approx(2.0 * (bce_a + bce_b) / 2, rel=1e-6)
    dice_a = 1 - (2 * 0.75 / 1000 + 1e-6) / ((0.75 + 0.5 + 1) / 1000 + 1e-6)
    dice_b = 1 - 1e-6 / (3.0 / 1000 + 1e-6)
    assert losses["dice"].item() == pytest.approx(0.5 * (dice_a + dice_b) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="2 predicted masks but 1 targets"):
        sam.loss(out, [ta])


def test_validation_counts_score_thresholded_masks(sam):
    # mask a: 2 of 3 predicted pixels are right, 1 gold pixel missed -> IoU 2/4; mask b: predicts nothing
    a = torch.tensor([[5.0, 5.0, 5.0, -5.0]])
    ta = torch.tensor([[1.0, 1.0, 0.0, 1.0]])
    b = torch.full((2, 2), -0.1)  # soft probabilities near 0.5, but below the threshold: an empty mask
    tb = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    out = SamOutput(batch_index=torch.tensor([0, 1]), mask_logits=[a, b], low_res_logits=torch.zeros(2, 4, 4),
                    scores=torch.zeros(2))
    counts = sam.validation_counts(out, [ta, tb])
    assert counts["ciou"] == (2.0, 5.0)  # intersections 2 + 0 over unions 4 + 1
    assert counts["giou"] == (0.5, 2.0)
    assert counts["area_ratio"] == (3.0, 4.0)


# --- the decoder on its own -----------------------------------------------------------------------
def _images():
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)),
            Image.fromarray(rng.integers(0, 255, (64, 30, 3), dtype=np.uint8))]


def test_forward_orders_masks_and_encodes_each_image_once(sam):
    images = _images()
    pixels = sam.prepare_images(images)
    assert pixels.pixel_values.shape == (2, 3, 64, 64)
    assert pixels.input_sizes == [(40, 64), (64, 30)] and pixels.original_sizes == [(40, 64), (64, 30)]
    torch.manual_seed(1)
    prompts = torch.randn(3, 1, sam.prompt_dim)
    calls = []
    hook = sam.model.vision_encoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    try:
        out = sam(DecoderInput(prompts=prompts, batch_index=torch.tensor([0, 0, 1]), batch_size=2, pixels=pixels))
    finally:
        hook.remove()
    assert calls == [2]  # one image-encoder pass, one embedding per sample, shared by its <seg>s
    assert [tuple(m.shape) for m in out.mask_logits] == [(40, 64), (40, 64), (64, 30)]
    # each occurrence alone gives the same mask: order and pairing are kept
    for i, b in enumerate([0, 0, 1]):
        alone = sam(DecoderInput(prompts=prompts[i:i + 1], batch_index=torch.tensor([b]), batch_size=2, pixels=pixels))
        torch.testing.assert_close(alone.mask_logits[0], out.mask_logits[i], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out.mask_logits[0], out.mask_logits[1])  # different prompts, different masks
    masks = sam.postprocess(out, None)
    assert all(isinstance(m, Mask) and m.mask.dtype == bool for m in masks)
    assert [m.mask.shape for m in masks] == [(40, 64), (40, 64), (64, 30)]
    np.testing.assert_array_equal(masks[2].mask, (out.mask_logits[2] > 0).numpy())


def test_masks_of_one_image_size_are_decoded_and_scored_together(tiny_dir):
    """Masks are upsampled and scored per image size, not per mask (GPU steps were bound by per-mask kernel
    launches: bench/cuda/README.md); values, order and gradients are those of the per-mask computation."""
    torch.manual_seed(0)
    sam = SamDecoder(model_name_or_path=str(tiny_dir / "sam"), prompt_align_weight=0.2)
    images = _images()
    pixels = sam.prepare_images(images)
    torch.manual_seed(2)
    prompts = torch.randn(4, 1, sam.prompt_dim, requires_grad=True)
    batch_index = torch.tensor([1, 0, 1, 0])  # two image sizes, interleaved
    out = sam(DecoderInput(prompts=prompts, batch_index=batch_index, batch_size=2, pixels=pixels))
    assert [(idx, tuple(g.shape)) for idx, g in out.groups] == [([0, 2], (2, 64, 30)), ([1, 3], (2, 40, 64))]
    padded = tuple(pixels.pixel_values.shape[-2:])
    for i, b in enumerate(batch_index.tolist()):
        one = upsample_mask(out.low_res_logits[i], padded=padded, input_size=pixels.input_sizes[b],
                            original_size=pixels.original_sizes[b])
        torch.testing.assert_close(out.mask_logits[i], one)
    rng = np.random.default_rng(3)
    targets = [torch.from_numpy(rng.random(tuple(m.shape)) > 0.5).float() for m in out.mask_logits]
    grouped = sam.loss(out, targets)
    g_grouped = torch.autograd.grad(grouped["bce"] + grouped["dice"] + grouped["align"], prompts, retain_graph=True)[0]
    per_mask = sam.loss(SamOutput(**{**out.__dict__, "groups": None}), targets)  # one group per mask
    g_per_mask = torch.autograd.grad(per_mask["bce"] + per_mask["dice"] + per_mask["align"], prompts)[0]
    for key in ("bce", "dice", "align"):
        torch.testing.assert_close(grouped[key], per_mask[key])
    torch.testing.assert_close(g_grouped, g_per_mask)
    with pytest.raises(ValueError, match=r"target masks \[\(40, 64\)\] vs predictions \(64, 30\)"):
        sam.loss(out, [targets[1]] * 4)


def test_upsample_crops_the_padding():
    low = torch.zeros(4, 4)
    low[:, 2:] = 5.0  # right half of the padded square is padding for a 16x8 image
    up = upsample_mask(low, padded=(16, 16), input_size=(16, 8), original_size=(32, 16))
    assert up.shape == (32, 16) and float(up.max()) < 5.0 * 0.5  # the padding's logits are cropped away


def test_empty_target_trains_and_prepare_target_checks_size(sam):
    image = _images()[0]
    target = sam.prepare_target(np.zeros((40, 64), bool), image)
    assert target.dtype == torch.float32 and target.sum() == 0
    with pytest.raises(ValueError, match="original size"):
        sam.prepare_target(np.zeros((10, 10), bool), image)
    sam.set_trainable()
    prompts = torch.randn(1, 1, sam.prompt_dim, requires_grad=True)
    out = sam(DecoderInput(prompts=prompts, batch_index=torch.tensor([0]), batch_size=1, pixels=sam.prepare_images([image])))
    losses = sam.loss(out, [target])
    total = losses["bce"] + losses["dice"]
    assert torch.isfinite(total)
    total.backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0


def test_set_trainable_options(tiny_dir):
    def trainable(dec):
        parts = {"vision_encoder": False, "prompt_encoder": False, "mask_decoder": False}
        for name, p in dec.model.named_parameters():
            for part in parts:
                if name.startswith(part) and p.requires_grad:
                    parts[part] = True
        return parts

    path = str(tiny_dir / "sam")
    d = SamDecoder(model_name_or_path=path)
    d.set_trainable()
    assert trainable(d) == {"vision_encoder": False, "prompt_encoder": False, "mask_decoder": True}
    d = SamDecoder(model_name_or_path=path, freeze_image_encoder=False, freeze_prompt_encoder=False,
                   train_mask_decoder=False)
    d.set_trainable()
    assert trainable(d) == {"vision_encoder": True, "prompt_encoder": True, "mask_decoder": False}
    pixels = d.prepare_images(_images())
    out = d(DecoderInput(prompts=torch.randn(2, 1, d.prompt_dim), batch_index=torch.tensor([0, 1]), batch_size=2,
                         pixels=pixels))
    sum(d.loss(out, [torch.zeros(40, 64), torch.ones(64, 30)]).values()).backward()
    unused = [n for n, p in d.named_parameters() if p.requires_grad and p.grad is None]
    assert unused == []  # every trainable part takes part (DDP-safe)
    d = SamDecoder(model_name_or_path=path, freeze=True, freeze_image_encoder=False)
    d.set_trainable()
    assert not any(p.requires_grad for p in d.parameters())


def test_missing_checkpoint_says_what_to_do(tmp_path):
    from omniplug.config.schema import ConfigError

    with pytest.raises(ConfigError, match="omniplug tiny"):
        SamDecoder(model_name_or_path=str(tmp_path / "nope"))


# --- the whole tiny model -------------------------------------------------------------------------
def test_seg_yaml_forward_backward_and_weights_round_trip(tiny_dir, tmp_path):
    from omniplug.build import build_entry, build_model
    from omniplug.config import load_config
    from omniplug.data.collate import Collator
    from omniplug.weights import load_trainable, save_trainable

    cfg = load_config(tiny_dir / "seg.yaml", ["one_model.conv_type=plain"])
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.decoders["seg"].prompt_dim == 32 and model.out_projectors["seg"].out_features == 32
    ds = build_entry(cfg.entry("dataset", "shapes_train", where="test"))
    multi = build_entry(cfg.entry("dataset", "shapes_train", where="test"), refs_per_sample=3)
    samples = [ds[0], multi[1]]  # 1 + 2..3 <seg>
    batch = Collator(model, max_length=cfg.data.max_length)(samples)
    n_masks = 1 + len(multi[1].targets["seg"])
    assert len(batch.targets["seg"]) == n_masks >= 3
    out = model(batch)
    assert set(out.decoder_losses) == {"seg/bce", "seg/dice"} and torch.isfinite(out.loss)
    assert [tuple(m.shape) for m in out.decoder_outputs["seg"].mask_logits] == [(48, 64)] * n_masks
    out.loss.backward()
    named = dict(model.named_parameters())
    assert named["out_projectors.seg.layers.0.weight"].grad.abs().sum() > 0
    trainable = [n for n, p in named.items() if p.requires_grad]
    assert any(n.startswith("decoders.seg.model.mask_decoder") for n in trainable)
    assert [n for n in trainable if named[n].grad is None] == []  # no unused trainable parameter (DDP-safe)
    assert all(not p.requires_grad for n, p in named.items() if n.startswith("decoders.seg.model.vision_encoder"))

    with torch.no_grad():  # move the trainable weights off their initial values, then round-trip them
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.01)
    save_trainable(model, tmp_path / "ckpt")
    model.eval()
    with torch.no_grad():
        ref = model(batch).decoder_outputs["seg"].mask_logits
    torch.manual_seed(123)
    fresh = build_model(cfg)
    load_trainable(fresh, tmp_path / "ckpt")
    fresh.eval()
    with torch.no_grad():
        again = fresh(batch).decoder_outputs["seg"].mask_logits
    for a, b in zip(ref, again):
        torch.testing.assert_close(a, b)


# --- prompt-region alignment ----------------------------------------------------------------------
def test_region_descriptors_place_the_target_like_the_image(tiny_dir):
    """A target's descriptor averages the embedding grid where the mask lies inside SAM's padded input:
    the left half of a square image -> the grid's left columns; a whole 1:2 image -> the grid's top rows."""
    torch.manual_seed(0)
    sam = SamDecoder(model_name_or_path=str(tiny_dir / "sam"), prompt_align_weight=1.0)
    side = int(sam.model.config.vision_config.image_size)
    c = sam.dense_width
    pos = sam.model.get_image_wide_positional_embeddings()[0].detach()
    g = pos.shape[-1]
    embeds = torch.randn(2, c, g, g)
    left = torch.zeros(side, side)
    left[:, : side // 2] = 1
    wide = torch.ones(side // 2, side)  # 1:2 image: resized to (side/2, side), padded below
    out = SamOutput(batch_index=torch.tensor([0, 1]), mask_logits=[], low_res_logits=torch.zeros(2, 4, 4),
                    scores=torch.zeros(2), image_embeddings=embeds, prompts=torch.zeros(2, c),
                    input_sizes=[(side, side), (side // 2, side)])
    desc = sam.region_descriptors(out, [left, wide])
    torch.testing.assert_close(desc[0, :c], embeds[0, :, :, : g // 2].mean(dim=(1, 2)))
    torch.testing.assert_close(desc[1, :c], embeds[1, :, : g // 2, :].mean(dim=(1, 2)))
    torch.testing.assert_close(desc[1, c:], pos[:, : g // 2, :].mean(dim=(1, 2)))


def test_align_loss_teaches_prompts_their_regions(tiny_dir):
    """InfoNCE from random prompts starts at chance or worse; a few steps on the prompts and the head make every
    prompt pick its own region; gradients reach the prompts but not the (detached) image embeddings.
    Empty targets are left out; without the option there is no head and no term."""
    torch.manual_seed(0)
    sam = SamDecoder(model_name_or_path=str(tiny_dir / "sam"), prompt_align_weight=1.0)
    side, c, m = int(sam.model.config.vision_config.image_size), sam.dense_width, 6
    targets = []
    for k in range(m):  # six disjoint vertical stripes
        t = torch.zeros(side, side)
        t[:, k * side // m:(k + 1) * side // m] = 1
        targets.append(t)
    g = sam.model.get_image_wide_positional_embeddings().shape[-1]
    embeds = torch.randn(1, c, g, g).expand(m, -1, -1, -1).clone().requires_grad_(True)
    prompts = torch.randn(m, c, requires_grad=True)

    def output():
        return SamOutput(batch_index=torch.zeros(m, dtype=torch.long), mask_logits=[torch.zeros(side, side)] * m,
                         low_res_logits=torch.zeros(m, 4, 4), scores=torch.zeros(m), image_embeddings=embeds,
                         prompts=prompts, input_sizes=[(side, side)] * m)

    first = sam.align_loss(output(), targets)
    assert first.item() > 0.5 * math.log(m)  # random prompts: no better than chance
    first.backward()
    assert prompts.grad is not None and prompts.grad.abs().sum() > 0 and embeds.grad is None
    opt = torch.optim.Adam([prompts, *sam.align_head.parameters()], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss = sam.align_loss(output(), targets)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first.item()
    z = torch.nn.functional.normalize(sam.align_head(prompts), dim=-1)
    r = torch.nn.functional.normalize(sam.region_descriptors(output(), targets), dim=-1)
    assert torch.equal((z @ r.T).argmax(1), torch.arange(m))
    assert "align" in sam.loss(output(), targets)
    empty = [torch.zeros(side, side)] * (m - 1) + [targets[0]]
    assert sam.align_loss(output(), empty).item() == 0.0  # one non-empty mask: nothing to contrast
    plain = SamDecoder(model_name_or_path=str(tiny_dir / "sam"))
    assert plain.align_head is None and "align" not in plain.loss(output(), targets)
    with pytest.raises(ValueError, match="prompt_align_weight must be >= 0"):
        SamDecoder(model_name_or_path=str(tiny_dir / "sam"), prompt_align_weight=-1.0)


def test_align_term_through_yaml_reaches_the_llm_side(tiny_dir):
    """``decoder.X.prompt_align_weight`` from YAML: the one model logs ``seg/align`` and its gradient reaches
    the output projector (the LLM side), with every trainable parameter used."""
    from omniplug.build import build_entry, build_model
    from omniplug.config import load_config
    from omniplug.data.collate import Collator

    cfg = load_config(tiny_dir / "seg.yaml", ["one_model.conv_type=plain", "decoder.tiny_sam.prompt_align_weight=0.5"])
    torch.manual_seed(0)
    model = build_model(cfg)
    multi = build_entry(cfg.entry("dataset", "shapes_train", where="test"), refs_per_sample=3)
    batch = Collator(model, max_length=cfg.data.max_length)([multi[0], multi[1]])
    out = model(batch)
    assert set(out.decoder_losses) == {"seg/bce", "seg/dice", "seg/align"} and out.decoder_losses["seg/align"] > 0
    out.decoder_losses["seg/align"].backward()
    named = dict(model.named_parameters())
    assert named["out_projectors.seg.layers.0.weight"].grad.abs().sum() > 0
    assert named["decoders.seg.align_head.weight"].requires_grad

"""The ``diffusion`` decoder on its own: parity with diffusers' StableDiffusionPipeline, editing
(what stays unchanged outside the mask), inpainting and pixel-space UNets, bad input, the
``gen_transformer`` projector and the generation/editing readers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.decoders.diffusion import DiffusionDecoder, SourceImages
from omniplug.config.schema import ConfigError
from omniplug.types import DecoderInput, Mask

SEQ, DIM = 8, 32  # the tiny UNet's cross_attention_dim


@pytest.fixture(scope="module")
def sd_dir(tiny_dir):
    return tiny_dir / "sd"


def _decoder(path, **kw) -> DiffusionDecoder:
    settings = dict(model_name_or_path=str(path), num_tokens=4, seq_len=SEQ, num_inference_steps=4, guidance_scale=4.0)
    settings.update(kw)
    return DiffusionDecoder(**settings).eval()


@pytest.fixture(scope="module")
def decoder(sd_dir):
    return _decoder(sd_dir, text_encoder="text_encoder")


def _source(tiny_dir) -> Image.Image:
    return Image.open(tiny_dir / "gen_data" / "images" / "0000.png").convert("RGB")


def _box_mask(h=64, w=64) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    mask[h // 4: h * 5 // 8, w // 4: w * 3 // 4] = True
    return mask


@pytest.mark.parametrize("scheduler,guidance", [(None, 4.0), ("dpm_solver_pp", 4.0), ("euler", 1.0)])
def test_parity_with_stable_diffusion_pipeline(sd_dir, scheduler, guidance):
    from diffusers import StableDiffusionPipeline

    dec = _decoder(sd_dir, scheduler=scheduler, guidance_scale=guidance)
    torch.manual_seed(1)
    emb = torch.randn(2, SEQ, DIM)
    with torch.no_grad():
        dec.uncond.normal_()  # a "learned" unconditional embedding, not the zero init
    ours = dec.sample(emb, seeds=[3, 4])
    pipe = StableDiffusionPipeline(vae=dec.vae, text_encoder=None, tokenizer=None, unet=dec.unet,
                                   scheduler=dec._scheduler_class.from_config(dec._scheduler_config), safety_checker=None,
                                   feature_extractor=None, image_encoder=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    negative = dec.uncond.detach().expand(2, -1, -1) if guidance > 1 else None
    ref = pipe(prompt_embeds=emb, negative_prompt_embeds=negative, num_inference_steps=4, guidance_scale=guidance,
               height=64, width=64, generator=[torch.Generator().manual_seed(s) for s in (3, 4)], output_type="np").images
    diff = (torch.from_numpy(ref).permute(0, 3, 1, 2) - ours).abs().max().item()
    assert diff <= 1e-4, f"max abs pixel difference {diff}"
    assert type(pipe.scheduler).__name__ == {None: "DDIMScheduler", "dpm_solver_pp": "DPMSolverMultistepScheduler",
                                             "euler": "EulerDiscreteScheduler"}[scheduler]


def test_same_seed_same_image_and_postprocess_gives_pil(decoder):
    emb = torch.randn(3, SEQ, DIM)
    a, b = decoder.sample(emb), decoder.sample(emb)
    assert torch.equal(a, b) and a.shape == (3, 3, 64, 64) and 0 <= a.min() and a.max() <= 1
    out = decoder(DecoderInput(prompts=emb, batch_index=torch.tensor([0, 0, 1]), batch_size=2))
    images = decoder.postprocess(out, DecoderInput(prompts=emb, batch_index=torch.tensor([0, 0, 1]), batch_size=2))
    assert [im.size for im in images] == [(64, 64)] * 3 and all(im.mode == "RGB" for im in images)
    # occurrence k of a sample uses seed + k: the two occurrences of sample 0 differ in noise
    assert np.asarray(images[0]).tolist() != np.asarray(images[1]).tolist()


def test_bad_sampling_settings_are_clear_errors(sd_dir, decoder):
    with pytest.raises(ConfigError, match="height=60 is not a positive multiple of the VAE factor 8"):
        _decoder(sd_dir, height=60)
    with pytest.raises(ConfigError, match="num_inference_steps must be >= 1"):
        _decoder(sd_dir, num_inference_steps=0)
    with pytest.raises(ConfigError, match="guidance_scale must be >= 0"):
        _decoder(sd_dir, guidance_scale=-1.0)
    emb = torch.randn(1, SEQ, DIM)
    with pytest.raises(ValueError, match="width=36 is not a positive multiple"):
        decoder.sample(emb, width=36)
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        decoder.sample(emb, num_inference_steps=-2)
    with pytest.raises(ValueError, match="guidance_scale must be >= 0"):
        decoder.sample(emb, guidance_scale=-0.5)
    with pytest.raises(ValueError, match="set the decoder's seq_len"):
        decoder(DecoderInput(prompts=torch.randn(1, 4, DIM), batch_index=torch.tensor([0]), batch_size=1))
    with pytest.raises(ConfigError, match="empty_text needs text_encoder"):
        _decoder(sd_dir, uncond_embedding="empty_text")


def test_latent_blending_keeps_source_latents_outside_the_mask(decoder, tiny_dir):
    """With a plain 4-channel UNet the edit blends latents each step; after the last step every latent
    cell outside the (latent) mask equals the source's latents exactly (tolerance 1e-5). In pixels that
    means: equal to the VAE round trip decode(encode(source)) *up to the VAE decoder's receptive field*
    — with this random tiny VAE (mid-block attention) the edit leaks over the whole image (measured
    max |diff| ~0.87 outside the mask), which is why ``paste_back`` (next test) exists."""
    src = decoder.prepare_images([_source(tiny_dir)]).pixels
    mask = decoder._mask(_box_mask())[None]
    latents = decoder.sample(torch.randn(1, SEQ, DIM), sources=src, masks=mask, output="latents")
    with torch.no_grad():
        source_latents = decoder.encode(src, sample=False)
    outside = decoder._latent_mask(mask)[0, 0] < 0.5
    assert outside.any() and (~outside).any()
    assert (latents - source_latents)[..., outside].abs().max().item() <= 1e-5
    assert (latents - source_latents)[..., ~outside].abs().max().item() > 1e-2  # the inside really changed


def test_paste_back_keeps_pixels_outside_the_mask_exactly(decoder, tiny_dir):
    """One request -> the <seg> mask (from the context) and the edited image at the source's own size:
    pixels outside the mask are the source's, bit for bit (tolerance 0 in uint8)."""
    src = _source(tiny_dir).resize((48, 40))  # not the decoder's 64x64: the edit comes back at 48x40
    mask = _box_mask(40, 48)
    emb = torch.randn(2, SEQ, DIM)
    inp = DecoderInput(prompts=emb, batch_index=torch.tensor([0, 1]), batch_size=2,
                       pixels=decoder.prepare_images([src, src]),
                       context={"seg": [[Mask(mask=mask, score=1.0)], []]})  # sample 1: no mask -> plain generation
    edited, generated = decoder.postprocess(decoder(inp), inp)
    assert edited.size == (48, 40) and generated.size == (64, 64)
    before, after = np.asarray(src), np.asarray(edited)
    assert np.array_equal(before[~mask], after[~mask])
    assert np.abs(before[mask].astype(int) - after[mask]).max() > 10  # the inside was regenerated
    # without a seg decoder in the context (or mask_from: null) the same request is a plain generation
    plain = decoder.postprocess(decoder(inp), DecoderInput(prompts=emb, batch_index=inp.batch_index, batch_size=2,
                                                           pixels=inp.pixels))
    assert plain[0].size == (64, 64)
    assert isinstance(inp.pixels, SourceImages)


def test_inpainting_unet_and_pixel_space_unet(tmp_path_factory, tiny_dir):
    from omniplug.data.generation import GenerationTarget
    from omniplug.fixtures.tiny_diffusion import write_sd

    root = tmp_path_factory.mktemp("sd_variants")
    inpaint = _decoder(write_sd(root / "inpaint", inpainting=True, text_encoder=False), num_inference_steps=2)
    assert inpaint.inpainting and inpaint.unet.config.in_channels == 9
    src = _source(tiny_dir)
    mask = _box_mask()
    target = inpaint.prepare_target(GenerationTarget(image=src, mask=mask), src)
    assert target.source is not None and target.mask.shape == (1, 64, 64)
    cond = torch.randn(1, SEQ, DIM, requires_grad=True)
    out = inpaint(DecoderInput(prompts=cond, batch_index=torch.tensor([0]), batch_size=1))
    losses = inpaint.loss(out, [target, inpaint.prepare_target(src, None)][:1])
    losses["diffusion"].backward()
    assert cond.grad is not None and torch.isfinite(losses["diffusion"])
    images = inpaint.sample(cond.detach(), sources=inpaint.prepare_images([src]).pixels,
                            masks=inpaint._mask(mask)[None])
    exact = (torch.from_numpy(np.asarray(src)).permute(2, 0, 1) / 255.0)
    assert (images[0] - exact)[:, ~torch.from_numpy(mask)].abs().max() < 1e-5
    assert inpaint.sample(cond.detach()).shape == (1, 3, 64, 64)  # plain generation with an inpainting UNet

    pixel = _decoder(write_sd(root / "pixel", pixel_space=True, text_encoder=False), vae="none", num_inference_steps=2,
                     paste_back=False)
    assert pixel.vae is None and pixel.vae_factor == 1 and (pixel.height, pixel.width) == (32, 32)
    small = src.resize((32, 32))
    m = _box_mask(32, 32)
    edited = pixel.sample(torch.randn(1, SEQ, DIM), sources=pixel.prepare_images([small]).pixels,
                          masks=pixel._mask(m)[None])
    exact = torch.from_numpy(np.asarray(small)).permute(2, 0, 1) / 255.0
    # pixel space has no VAE round trip: blending alone keeps the outside (float tolerance 1e-5)
    assert (edited[0] - exact)[:, ~torch.from_numpy(m)].abs().max() < 1e-5
    t = pixel.prepare_target(small, None)
    pixel.loss(pixel(DecoderInput(prompts=torch.randn(1, SEQ, DIM), batch_index=torch.tensor([0]), batch_size=1)), [t])


def test_alignment_loss_and_trainability(decoder, tiny_dir):
    from omniplug.data.generation import GenerationTarget

    target = decoder.prepare_target(GenerationTarget(image=_source(tiny_dir), caption="a red circle"), None)
    cond = torch.randn(2, SEQ, DIM, requires_grad=True)
    losses = decoder.loss(decoder(DecoderInput(prompts=cond, batch_index=torch.tensor([0, 1]), batch_size=2)),
                          [target, decoder.prepare_target(_source(tiny_dir), None)])
    assert set(losses) == {"diffusion", "align"}  # align only over the captioned target
    sum(losses.values()).backward()
    assert cond.grad is not None
    decoder.set_trainable()
    trainable = {n for n, p in decoder.named_parameters() if p.requires_grad}
    assert trainable == {"uncond"}  # train_unet: false; the VAE and text encoder never train
    decoder.train_unet = True
    decoder.set_trainable()
    assert any(n.startswith("unet.") for n, p in decoder.named_parameters() if p.requires_grad)
    assert not any(n.startswith(("vae.", "text_encoder.")) for n, p in decoder.named_parameters() if p.requires_grad)
    decoder.train_unet = False
    decoder.requires_grad_(False)


def test_gen_transformer_maps_k_hiddens_to_a_sequence():
    from omniplug.projectors.gen_query import GenQueryProjector

    proj = GenQueryProjector(in_features=64, out_features=DIM, num_queries=77, width=32, heads=4, depth=1)
    x = torch.randn(3, 4, 64, requires_grad=True)
    y = proj(x)
    assert y.shape == (3, 77, DIM)
    y.square().mean().backward()
    assert x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="divisible by heads"):
        GenQueryProjector(in_features=64, out_features=DIM, width=30, heads=4)


def test_readers(tiny_dir):
    from omniplug.data.generation import EditingTriples, GenerationPairs, GenerationTarget, gen_tokens

    assert gen_tokens("<gen>", 1) == ["<gen>"] and gen_tokens("<gen>", 3) == ["<gen_0>", "<gen_1>", "<gen_2>"]
    pairs = GenerationPairs(data_dir=str(tiny_dir / "gen_data"), num_tokens=4)
    s = pairs[0]
    assert s.turns[0].text.startswith("Draw a ") and s.turns[1].text == "<gen_0><gen_1><gen_2><gen_3>"
    assert isinstance(s.targets["gen"][0], GenerationTarget) and s.targets["gen"][0].caption == s.meta["caption"]
    assert not s.images
    edits = EditingTriples(data_dir=str(tiny_dir / "gen_data"), num_tokens=4)
    e = edits[0]
    assert e.turns[0].images == 1 and len(e.images) == 1
    assert e.turns[1].text == "<seg> <gen_0><gen_1><gen_2><gen_3>"
    assert e.targets["seg"][0].shape == (64, 64) and e.targets["gen"][0].mask is e.targets["seg"][0]
    with pytest.raises(FileNotFoundError, match="generation.jsonl"):
        GenerationPairs(data_dir=str(tiny_dir))
    assert s.targets["gen"][0].focus is None


def test_generation_pairs_read_an_optional_focus_mask(tmp_path):
    import json

    from omniplug.data.generation import GenerationPairs

    Image.new("RGB", (8, 8), (0, 0, 255)).save(tmp_path / "a.png")
    focus = np.zeros((8, 8), np.uint8)
    focus[2:4, 5:7] = 255
    Image.fromarray(focus).save(tmp_path / "a_focus.png")
    rows = [{"image": "a.png", "caption": "a blue square", "focus": "a_focus.png"}, {"image": "a.png", "caption": "sky"}]
    (tmp_path / "generation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs = GenerationPairs(data_dir=str(tmp_path))
    got = pairs[0].targets["gen"][0].focus
    assert got.dtype == bool and np.array_equal(got, focus > 0) and "focus" not in pairs[0].meta
    assert pairs[1].targets["gen"][0].focus is None


def test_prediction_type_of_a_from_scratch_unet(sd_dir):
    """x0 ("sample") prediction trains on the clean image and samples with the same parameterisation;
    a pretrained UNet keeps the prediction type it was trained with."""
    from omniplug.data.generation import GenerationTarget

    dec = _decoder(sd_dir, from_scratch=True, prediction_type="sample", num_inference_steps=2)
    assert dec._train_scheduler.config.prediction_type == "sample"
    assert dec._scheduler_config["prediction_type"] == "sample"
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    target = dec.prepare_target(GenerationTarget(image=image), None)
    cond = torch.randn(1, SEQ, DIM)
    out = dec(DecoderInput(prompts=cond, batch_index=torch.tensor([0]), batch_size=1))
    with torch.no_grad():  # the loss is the MSE between the UNet's output and the clean latents
        torch.manual_seed(0)
        loss = dec.loss(out, [target])["diffusion"]
        torch.manual_seed(0)
        latents = dec.encode(target.pixels[None], sample=True)
        noise = torch.randn_like(latents)
        steps = torch.randint(0, dec._train_scheduler.config.num_train_timesteps, (1,))
        noisy = dec._train_scheduler.add_noise(latents, noise, steps)
        pred = dec.unet(noisy, steps, encoder_hidden_states=cond).sample
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(pred, latents).item(), rel=1e-4)
    assert dec.sample(cond).shape == (1, 3, 64, 64)
    with pytest.raises(ConfigError, match="only applies to a UNet trained from scratch"):
        _decoder(sd_dir, prediction_type="sample")


def test_pooled_conditioning_through_the_class_embedding(tmp_path_factory):
    """A UNet with ``class_embed_type: projection`` gets the mean of the conditioning vectors through its class
    embedding (added to the time embedding), in the loss and in sampling, guided or not; other class
    conditioning and a width mismatch are loud configuration errors."""
    from omniplug.data.generation import GenerationTarget
    from omniplug.fixtures.tiny_diffusion import CROSS_DIM, write_sd

    root = tmp_path_factory.mktemp("sd_pooled")
    path = write_sd(root / "pooled", pixel_space=True, text_encoder=False,
                    unet_extra=dict(class_embed_type="projection", projection_class_embeddings_input_dim=CROSS_DIM))
    dec = _decoder(path, vae="none", num_inference_steps=2, from_scratch=True, prediction_type="sample")
    assert dec.pooled
    cond = torch.randn(2, SEQ, DIM)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 500])
    with torch.no_grad():
        ours = dec.predict(x, t, cond)
        direct = dec.unet(x, t, encoder_hidden_states=cond, class_labels=cond.mean(1)).sample
        unpooled = dec.unet(x, t, encoder_hidden_states=cond, class_labels=torch.zeros(2, DIM)).sample
    assert torch.equal(ours, direct) and not torch.allclose(ours, unpooled)
    cond.requires_grad_(True)
    target = dec.prepare_target(GenerationTarget(image=Image.new("RGB", (32, 32), (10, 200, 10))), None)
    out = dec(DecoderInput(prompts=cond[:1], batch_index=torch.tensor([0]), batch_size=1))
    dec.train()
    dec.train_unet = True
    dec.set_trainable()
    dec.loss(out, [target])["diffusion"].backward()
    assert dec.unet.class_embedding.linear_1.weight.grad.abs().sum() > 0 and cond.grad.abs().sum() > 0
    dec.eval()
    assert dec.sample(cond.detach()).shape == (2, 3, 32, 32)  # guided: uncond rows are pooled too
    assert dec.sample(cond.detach(), guidance_scale=1.0).shape == (2, 3, 32, 32)

    wrong = write_sd(root / "wrong", pixel_space=True, text_encoder=False,
                     unet_extra=dict(class_embed_type="projection", projection_class_embeddings_input_dim=DIM + 1))
    with pytest.raises(ConfigError, match="projection_class_embeddings_input_dim"):
        _decoder(wrong, vae="none")
    classes = write_sd(root / "classes", pixel_space=True, text_encoder=False, unet_extra=dict(num_class_embeds=10))
    with pytest.raises(ConfigError, match="class conditioning"):
        _decoder(classes, vae="none")
    # pooled_conditioning: a UNet trained from scratch gets the class embedding; a pretrained one must have it
    plain = write_sd(root / "plain", pixel_space=True, text_encoder=False)
    scratch = _decoder(plain, vae="none", from_scratch=True, pooled_conditioning=True)
    assert scratch.pooled and scratch.unet.config.projection_class_embeddings_input_dim == DIM
    assert not _decoder(plain, vae="none", from_scratch=True).pooled
    with pytest.raises(ConfigError, match="pooled_conditioning needs a UNet with class_embed_type"):
        _decoder(plain, vae="none", pooled_conditioning=True)


def test_focus_weight_counts_the_described_pixels_more(sd_dir):
    """``focus_weight`` W: the diffusion error inside a target's focus mask counts 1 + W times the error
    outside (each image's weights average 1; latent cells take the share of their pixels in focus);
    targets without a mask, and W = 0, give the plain mean."""
    import torch.nn.functional as F

    from omniplug.data.generation import GenerationTarget

    dec = _decoder(sd_dir, from_scratch=True, prediction_type="sample", focus_weight=4.0)
    focus = np.zeros((64, 64), bool)
    focus[:, :16] = True  # a quarter of the image
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    with_focus = dec.prepare_target(GenerationTarget(image=image, focus=focus), None)
    without = dec.prepare_target(GenerationTarget(image=image), None)
    assert with_focus.focus.shape == (1, 64, 64) and without.focus is None
    latent = (64 // dec.vae_factor,) * 2
    weights = dec._focus_weights([with_focus, without], latent, torch.device("cpu"))
    assert weights.shape == (2, 1, *latent)
    assert torch.allclose(weights.mean(dim=(1, 2, 3)), torch.ones(2))
    assert weights[0, 0, 0, 0] / weights[0, 0, 0, -1] == pytest.approx(5.0) and torch.all(weights[1] == 1)
    assert dec._focus_weights([without], latent, torch.device("cpu")) is None

    cond = torch.randn(2, SEQ, DIM)
    out = dec(DecoderInput(prompts=cond, batch_index=torch.tensor([0, 1]), batch_size=2))
    with torch.no_grad():
        torch.manual_seed(0)
        loss = dec.loss(out, [with_focus, without])["diffusion"]
        torch.manual_seed(0)
        latents = dec.encode(torch.stack([with_focus.pixels, without.pixels]), sample=True)
        noise = torch.randn_like(latents)
        steps = torch.randint(0, dec._train_scheduler.config.num_train_timesteps, (2,))
        pred = dec.unet(dec._train_scheduler.add_noise(latents, noise, steps), steps, encoder_hidden_states=cond).sample
        error = (pred - latents).square()
        plain = error.mean()
    assert loss.item() == pytest.approx((weights * error).mean().item(), rel=1e-4)
    assert loss.item() != pytest.approx(plain.item(), rel=1e-3)
    # focus_weight 0 ignores the masks entirely (the recipe of runs trained before it existed)
    off = _decoder(sd_dir, from_scratch=True, prediction_type="sample")
    assert off.prepare_target(GenerationTarget(image=image, focus=focus), None).focus is None
    with pytest.raises(ConfigError, match="focus_weight must be a finite number >= 0"):
        _decoder(sd_dir, focus_weight=-1.0)


def test_patch_size_folds_pixels_into_channels(tmp_path_factory):
    """``patch_size`` p: a pixel-space UNet works on p x p patches folded into 3 p^2 channels (16x fewer
    UNet positions at p = 4): encoding is lossless, sampling gives full-size pixels, focus weights
    weigh each folded pixel as itself; a UNet of the wrong width, or a VAE, is a clear error."""
    import torch.nn.functional as F

    from omniplug.data.generation import GenerationTarget
    from omniplug.fixtures.tiny_diffusion import write_sd

    root = tmp_path_factory.mktemp("sd_patch")
    dec = _decoder(write_sd(root / "p2", pixel_space=True, text_encoder=False, patch=2), vae="none", patch_size=2,
                   num_inference_steps=2, from_scratch=True, prediction_type="sample", focus_weight=4.0)
    assert (dec.latent_channels, dec.vae_factor, dec.height, dec.width) == (12, 2, 32, 32)
    pixels = torch.rand(2, 3, 32, 32) * 2 - 1
    latents = dec.encode(pixels, sample=True)
    assert latents.shape == (2, 12, 16, 16)
    assert torch.equal(latents[0, :, 3, 5].view(3, 2, 2), pixels[0, :, 6:8, 10:12])  # one 2x2 patch per position
    assert torch.allclose(dec.decode(latents), (pixels / 2 + 0.5).clamp(0, 1))
    assert dec.sample(torch.randn(1, SEQ, DIM)).shape == (1, 3, 32, 32)

    focus = np.zeros((32, 32), bool)
    focus[:, :1] = True  # one pixel column: only the first column of each folded patch is in focus
    target = dec.prepare_target(GenerationTarget(image=Image.new("RGB", (32, 32), (9, 9, 9)), focus=focus), None)
    weights = dec._focus_weights([target], (16, 16), torch.device("cpu"))
    back = F.pixel_shuffle(weights, 2)
    assert back.shape == (1, 3, 32, 32) and torch.allclose(back.mean(), torch.tensor(1.0))
    assert back[0, :, :, 0].unique().numel() == 1 and back[0, 0, 0, 0] / back[0, 0, 0, 1] == pytest.approx(5.0)
    out = dec(DecoderInput(prompts=torch.randn(1, SEQ, DIM, requires_grad=True), batch_index=torch.tensor([0]),
                           batch_size=1))
    assert torch.isfinite(dec.loss(out, [target])["diffusion"])

    with pytest.raises(ConfigError, match="must output 3 x 4\\^2 = 48 channels"):
        _decoder(root / "p2", vae="none", patch_size=4)
    with pytest.raises(ConfigError, match="patch_size 2 folds pixels into channels"):
        _decoder(root / "p2", patch_size=2)


def test_noise_repeats_noise_each_target_several_times(sd_dir):
    """``noise_repeats`` R: one loss over R independent (noise, timestep) draws of every target under its
    own conditioning — the same as R copies of the batch — with gradients back to the conditioning."""
    from omniplug.data.generation import GenerationTarget

    rep = _decoder(sd_dir, from_scratch=True, prediction_type="sample", noise_repeats=3).train()
    one = _decoder(sd_dir, from_scratch=True, prediction_type="sample").train()
    one.load_state_dict(rep.state_dict())
    targets = [rep.prepare_target(GenerationTarget(image=Image.new("RGB", (64, 64), c)), None)
               for c in ((200, 30, 30), (30, 30, 200))]
    cond = torch.randn(2, SEQ, DIM, requires_grad=True)
    torch.manual_seed(0)
    loss = rep.loss(rep(DecoderInput(prompts=cond, batch_index=torch.tensor([0, 1]), batch_size=2)), targets)["diffusion"]
    torch.manual_seed(0)
    copies = one(DecoderInput(prompts=cond.repeat(3, 1, 1), batch_index=torch.arange(6), batch_size=6))
    assert loss.item() == pytest.approx(one.loss(copies, targets * 3)["diffusion"].item(), rel=1e-5)
    loss.backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="noise_repeats must be >= 1"):
        _decoder(sd_dir, noise_repeats=0)


def test_content_weight_teaches_the_conditioning_its_pictures_colours(sd_dir):
    """``content_weight``: a linear read-out of the pooled conditioning learns the target's colour histogram
    (over its focus pixels); the KL loss is 0 for a perfect read-out, reaches the conditioning, and the term
    is absent at W = 0."""
    from omniplug.data.generation import GenerationTarget

    dec = _decoder(sd_dir, from_scratch=True, prediction_type="sample", content_weight=1.0, content_bins=2).train()
    dec.set_trainable()
    assert dec.content_head.weight.requires_grad and dec.content_head.out_features == 8
    red, blue = Image.new("RGB", (64, 64), (250, 10, 10)), Image.new("RGB", (64, 64), (10, 10, 250))
    half = np.zeros((64, 64), bool)
    half[:, :32] = True
    image = np.asarray(red).copy()
    image[:, :32] = (10, 10, 250)  # the focus half is blue
    focused = dec.prepare_target(GenerationTarget(image=Image.fromarray(image), focus=half), None)
    hist = dec.colour_histograms([focused, dec.prepare_target(GenerationTarget(image=red), None)])
    assert hist[0, 1].item() == pytest.approx(1.0) and hist[1, 4].item() == pytest.approx(1.0)  # (0,0,1) / (1,0,0)

    targets = [dec.prepare_target(GenerationTarget(image=im), None) for im in (red, blue)]
    cond = torch.randn(2, SEQ, DIM, requires_grad=True)
    first = dec._content_loss(cond, targets)
    first.backward()
    assert first > 0 and cond.grad.abs().sum() > 0
    opt = torch.optim.Adam([cond, *dec.content_head.parameters()], lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        loss = dec._content_loss(cond, targets)
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first.item()
    out = dec(DecoderInput(prompts=cond.detach(), batch_index=torch.tensor([0, 1]), batch_size=2))
    assert set(dec.loss(out, targets)) == {"diffusion", "content"}
    plain = _decoder(sd_dir, from_scratch=True, prediction_type="sample").train()
    assert plain.content_head is None and set(plain.loss(out, targets)) == {"diffusion"}
    with pytest.raises(ConfigError, match="content_bins must be in"):
        _decoder(sd_dir, content_weight=1.0, content_bins=1)

"""Decoder ``video_diffusion`` (issue 25, part 2) on a tiny AnimateDiff-layout checkpoint: parity with diffusers'
own ``AnimateDiffPipeline``, the video loss trains through one_model, bad settings fail clearly, and a clip comes
out of ``omniplug infer`` (GIF + contact sheet), the API payload and the pipeline's Response."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.config.schema import ConfigError
from omniplug.decoders.video_diffusion import ClipTarget, VideoDiffusionDecoder
from omniplug.types import DecoderInput

PREFIX = "<vid_0><vid_1><vid_2><vid_3>"


@pytest.fixture(scope="module")
def decoder(tiny_dir):
    torch.manual_seed(0)
    return VideoDiffusionDecoder(model_name_or_path=str(tiny_dir / "vid"), num_frames=8, num_inference_steps=3,
                                 guidance_scale=2.0).eval()


def test_sampling_matches_diffusers_animatediff_pipeline(decoder):
    from diffusers import AnimateDiffPipeline

    with torch.no_grad():
        decoder.uncond.copy_(torch.randn_like(decoder.uncond) * 0.1)  # a non-trivial unconditional embedding
    pipe = AnimateDiffPipeline(vae=decoder.vae, text_encoder=None, tokenizer=None, unet=decoder.unet,
                               motion_adapter=None, scheduler=decoder._scheduler_class.from_config(decoder._scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    emb = torch.randn(1, decoder.seq_len, decoder.prompt_dim)
    ours = decoder.sample(emb, seeds=[5])
    theirs = pipe(prompt_embeds=emb, negative_prompt_embeds=decoder.uncond[None].detach(), num_frames=8, height=64,
                  width=64, num_inference_steps=3, guidance_scale=2.0, generator=torch.Generator().manual_seed(5),
                  output_type="pt").frames
    assert ours.shape == theirs.shape == (1, 8, 3, 64, 64)
    assert (ours - theirs).abs().max().item() < 1e-5  # pixels in [0, 1]


def test_loss_backward_and_bad_settings(decoder, tiny_dir):
    clips = [[Image.new("RGB", (64, 64), (40 * t, 80, 200)) for t in range(8)] for _ in range(2)]
    targets = [decoder.prepare_target(ClipTarget(frames=c), None) for c in clips]
    assert targets[0].shape == (8, 3, 64, 64)
    decoder.train()
    decoder.unet.requires_grad_(True)
    prompts = torch.randn(2, decoder.seq_len, decoder.prompt_dim, requires_grad=True)
    out = decoder(DecoderInput(prompts=prompts, batch_index=torch.tensor([0, 1]), batch_size=2))
    loss = decoder.loss(out, targets)["video"]
    loss.backward()
    assert torch.isfinite(loss) and prompts.grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in decoder.unet.parameters())
    decoder.eval()
    with pytest.raises(ValueError, match="has 3 frames but the decoder makes 8"):
        decoder.prepare_target(ClipTarget(frames=clips[0][:3]), None)
    with pytest.raises(ValueError, match="expects \\(4, 32\\)"):
        decoder(DecoderInput(prompts=torch.randn(1, 5, 32), batch_index=torch.tensor([0]), batch_size=1))
    with pytest.raises(ValueError, match="num_inference_steps must be >= 1"):
        decoder.sample(torch.randn(1, 4, 32), num_inference_steps=0)
    with pytest.raises(ValueError, match="num_frames must be 1..16"):
        decoder.sample(torch.randn(1, 4, 32), num_frames=40)
    with pytest.raises(ValueError, match="height=60 must be a positive multiple of 16"):
        decoder.sample(torch.randn(1, 4, 32), height=60)
    with pytest.raises(ConfigError, match="num_frames must be 1..16"):
        VideoDiffusionDecoder(model_name_or_path=str(tiny_dir / "vid"), num_frames=24)
    with pytest.raises(ConfigError, match="no unet"):
        VideoDiffusionDecoder(model_name_or_path=str(tiny_dir / "clips_data"))


def test_the_video_loss_falls_inside_one_model(tiny_dir, tmp_path):
    """20 steps of vid.yaml (world clips, the whole model): the decoder's loss on a fixed batch and noise falls."""
    from omniplug.build import build_model
    from omniplug.cli import main
    from omniplug.data.clip_generation import ClipGeneration
    from omniplug.data.collate import Collator

    overrides = [f"trainer.output_dir={tmp_path / 'run'}", "trainer.iters_per_epoch=20", "trainer.log_every=20"]

    def fixed_loss(weights: str | None) -> float:
        model = build_model(tiny_dir / "vid.yaml", ([f"one_model.weights={weights}"] if weights else []))
        model.eval()
        samples = [ClipGeneration(data_dir=str(tiny_dir / "clips_data"))[i] for i in range(4)]
        batch = Collator(model)(samples)
        torch.manual_seed(123)
        with torch.no_grad():
            return float(model(batch).decoder_losses["vid/video"])

    before = fixed_loss(None)
    assert main(["train", "-c", str(tiny_dir / "vid.yaml"), *overrides]) == 0
    after = fixed_loss(str(tmp_path / "run" / "checkpoints" / "step_000020"))
    assert after < 0.8 * before, (before, after)


def test_a_clip_comes_out_of_infer_the_response_and_the_api_payload(tiny_dir, tmp_path, capsys):
    from omniplug.cli import main
    from omniplug.infer.pipeline import Pipeline
    from omniplug.serve.payload import to_payload

    out = tmp_path / "out"
    assert main(["infer", "-c", str(tiny_dir / "vid.yaml"), "--prompt", "Make a clip of a red circle moving left.",
                 "--answer-prefix", PREFIX, "--max-new-tokens", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[clip 1]" in printed and "clip -> " in printed
    with Image.open(out / "clip_1.gif") as gif:
        assert gif.n_frames == 8 and gif.size == (64, 64)
    assert Image.open(out / "clip_1.png").size[0] >= 8 * 128
    pipe = Pipeline.from_config(str(tiny_dir / "vid.yaml"))
    response = pipe([], "Make a clip of a blue square falling.", answer_prefix=PREFIX, max_new_tokens=1)
    assert len(response.videos) == 1 and len(response.videos[0]) == 8 and response.text.startswith("[clip 1]")
    payload = to_payload(response)
    assert payload.videos[0].frames == 8
    with Image.open(io.BytesIO(base64.b64decode(payload.videos[0].gif))) as gif:
        assert gif.n_frames == 8
        first = np.asarray(gif.convert("RGB"))
    assert first.shape == (64, 64, 3)


def test_eval_generates_and_scores_clips_of_a_clip_split(tiny_dir, monkeypatch, capsys):
    """`omniplug eval --data <clip split>`: each prompt's clip is generated and read back from its pixels."""
    import json

    from omniplug.build import build_model
    from omniplug.cli import main
    from omniplug.eval.video import evaluate_clips, is_clip_split
    from tests.forced import force_answers

    assert is_clip_split(tiny_dir / "clips_data") and not is_clip_split(tiny_dir / "seg_data")
    model = build_model(tiny_dir / "vid.yaml").eval()
    force_answers(monkeypatch, model, PREFIX)  # the random LLM says the video tokens; the rest is real
    report = evaluate_clips(model, tiny_dir / "clips_data", n=2, batch_size=2)
    assert report["n"] == 2 and report["answered"] == 1.0
    assert all(0.0 <= report[k] <= 1.0 for k in ("frame_f1", "motion_accuracy", "consistency"))
    monkeypatch.undo()
    assert main(["eval", "-c", str(tiny_dir / "vid.yaml"), "--data", str(tiny_dir / "clips_data"), "--max-samples",
                 "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed) == {"clips_data/generation", "clips_data/questions"}  # no mask decoder: no segmentation
    assert set(printed["clips_data/generation"]) == {"frame_f1", "motion_accuracy", "consistency", "answered",
                                                   "movers_moving", "direction_blind_accuracy", "prompt_spread", "n"}


def test_export_writes_an_animatediff_folder_that_reloads(tiny_dir, tmp_path):
    import diffusers

    from omniplug.build import build_model
    from omniplug.cli import main

    out = tmp_path / "exported"
    assert main(["export", "-c", str(tiny_dir / "vid.yaml"), "--out", str(out)]) == 0
    unet = diffusers.UNetMotionModel.from_pretrained(out / "decoders" / "vid" / "unet")
    model = build_model(tiny_dir / "vid.yaml")
    for name, tensor in unet.state_dict().items():
        assert torch.equal(tensor, model.decoders["vid"].unet.state_dict()[name])
    again = build_model(out / "omniplug.yaml")
    emb = torch.randn(1, 4, 32)
    assert torch.allclose(again.decoders["vid"].sample(emb, seeds=[1], num_inference_steps=2),
                          model.decoders["vid"].sample(emb, seeds=[1], num_inference_steps=2), atol=1e-6)


def test_init_weights_starts_a_model_with_a_new_decoder_from_a_trained_one(tiny_dir, write_yaml, tmp_path, capsys):
    """`one_model.init_weights`: the segmentation model's weights start a model that adds a video decoder — every
    tensor they share is copied, the embedding rows of the old tokens too, the new decoder keeps its init."""
    from omniplug.build import build_model
    from omniplug.weights import init_from, save_trainable

    seg = build_model(tiny_dir / "seg.yaml")
    with torch.no_grad():  # a "trained" model: every trainable tensor moved away from its initialisation
        for p in seg.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    save_trainable(seg, tmp_path / "seg_run")
    both = f"""includes: [{tiny_dir / 'vid.yaml'}, {tiny_dir / 'seg.yaml'}]
one_model: {{decoder: null, out_projector: {{seg: sam_prompt_proj, vid: vid_proj}}, decoders: {{seg: tiny_sam, vid: tiny_vid}},
            init_weights: {tmp_path / 'seg_run'}}}
"""
    model = build_model(write_yaml(both))
    assert "tensors loaded" in capsys.readouterr().err
    old, new = dict(seg.named_parameters()), dict(model.named_parameters())
    shared = [n for n, p in old.items() if p.requires_grad and n in new and new[n].shape == p.shape]
    assert shared and all(torch.equal(old[n], new[n]) for n in shared)
    assert any(n.startswith("decoders.seg.") for n in shared)
    seg_tok, both_tok = seg.tokenizer, model.tokenizer
    assert both_tok.token_id("<seg>") == seg_tok.token_id("<seg>")  # new tokens come after the old ones
    ids = torch.arange(len(seg_tok))[None]
    with torch.no_grad():  # the old tokens' rows (<seg> included, trained) carried over
        assert len(both_tok) > len(seg_tok) and torch.equal(model.llm.embed(ids), seg.llm.embed(ids))
    report = init_from(model, tmp_path / "seg_run")
    assert any(n.startswith("decoders.vid.") for n in report.new) and not report.ignored
    with pytest.raises(ConfigError, match="no tensor fits this model"):
        from safetensors.torch import save_file

        save_file({"elsewhere.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
        init_from(model, tmp_path / "other.safetensors")
    with pytest.raises(ConfigError, match="weights not found"):
        init_from(model, tmp_path / "missing")


def test_clip_readers_write_their_split_on_first_use(tmp_path):
    from omniplug.data.clip_generation import ClipGeneration, ClipQA

    root = tmp_path / "clips"
    make = ClipGeneration(data_dir=str(root), split="train", n=3, seed=4)
    read = ClipQA(data_dir=str(root), split="train", n=3, seed=4, frames=2)  # the same split, read again
    assert len(make) == 3 and len(read) >= 6 and len(read[0].images) == 2
    with pytest.raises(ValueError, match="was written with"):
        ClipQA(data_dir=str(root), split="train", n=5, seed=4)
    with pytest.raises(ValueError, match="needs its split name"):
        ClipQA(data_dir=str(tmp_path / "other"), n=2)
    with pytest.raises(FileNotFoundError, match="omniplug world clips"):
        ClipQA(data_dir=str(tmp_path / "absent"))


def test_a_tiny_trained_video_decoder_moves_objects_the_way_it_is_told(tmp_path):
    """The simplest motions: a square slides left or right across 4 frames of 8 x 8. 250 steps of the decoder's own
    loss, each direction one learned conditioning, then sampling from noise: every clip read back (centroid track,
    as `clip_score` reads generated clips) moves the stated way; a direction-blind generator gets half at most."""
    from diffusers import DDIMScheduler, UNetMotionModel

    from omniplug.data.world.clip_score import direction_of

    torch.manual_seed(0)
    UNetMotionModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
                    down_block_types=("CrossAttnDownBlockMotion", "DownBlockMotion"),
                    up_block_types=("UpBlockMotion", "CrossAttnUpBlockMotion"), cross_attention_dim=16,
                    num_attention_heads=2, norm_num_groups=8, motion_num_attention_heads=2, motion_max_seq_length=8,
                    use_motion_mid_block=False).save_pretrained(str(tmp_path / "unet"))
    DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True).save_pretrained(
        str(tmp_path / "scheduler"))
    decoder = VideoDiffusionDecoder(model_name_or_path=str(tmp_path), vae="none", num_tokens=1, num_frames=4,
                                    num_inference_steps=8, guidance_scale=1.0, prediction_type="sample",
                                    train_unet=True, cond_dropout=0.0, from_scratch=True)
    decoder.set_trainable()
    conditions = torch.nn.Parameter(torch.randn(2, 1, 16))  # 0: left, 1: right

    def clip(right: bool) -> list[Image.Image]:
        frames = []
        for t in range(4):
            x = t if right else 4 - t
            pixels = np.zeros((8, 8, 3), np.uint8)
            pixels[2:6, x:x + 4] = 255
            frames.append(Image.fromarray(pixels))
        return frames

    clips = [decoder.prepare_target(ClipTarget(frames=clip(bool(d))), None) for d in (0, 1)]
    opt = torch.optim.Adam([*decoder.unet.parameters(), conditions], lr=2e-3)
    decoder.train()
    for _ in range(250):
        which = torch.randint(0, 2, (8,))
        out = decoder(DecoderInput(prompts=conditions[which], batch_index=torch.arange(8), batch_size=8))
        loss = decoder.loss(out, [clips[int(d)] for d in which])["video"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    decoder.eval()
    which = torch.tensor([0, 1] * 4)
    made = decoder.sample(conditions[which].detach(), seeds=list(range(8)))  # (8, 4, 3, 8, 8) in [0, 1]
    read = []
    for frames in made:
        track = []
        for frame in frames:
            cols = (frame.mean(0) > 0.5).nonzero()[:, 1].float()
            track.append((cols.mean().item(), 0.0) if len(cols) else None)
        read.append(direction_of(track, min_travel=1.0))
    accuracy = np.mean([r == ("right" if d else "left") for r, d in zip(read, which.tolist())])
    assert accuracy >= 0.875, read


def test_weights_stored_in_half_precision_load_back(tiny_dir, tmp_path):
    from omniplug.build import build_model
    from omniplug.weights import load_trainable, save_half, save_trainable, trainable_state_dict

    model = build_model(tiny_dir / "seg.yaml")
    full = save_trainable(model, tmp_path / "run")
    half = save_half(tmp_path / "run", tmp_path / "shipped")
    assert half.stat().st_size < 0.6 * full.stat().st_size
    again = build_model(tiny_dir / "seg.yaml")
    load_trainable(again, tmp_path / "shipped")
    before, after = trainable_state_dict(model), trainable_state_dict(again)
    assert all(after[k].dtype == before[k].dtype for k in before)
    assert max((after[k].float() - before[k].float()).abs().max().item() for k in before) < 1e-2

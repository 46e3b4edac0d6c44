"""Action adapters: binning, normalisation, residual VQ, the demonstrations format, and every
action decoder built inside a OneModel (tiny CLIP + tiny Llama) through YAML."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.actions.binning import from_bins, to_bins
from omniplug.actions.episodes import Episode, EpisodeWriter, read_actions, read_episode, read_index, read_meta
from omniplug.actions.normalize import Normalizer
from omniplug.actions.rvq import ResidualVQ
from omniplug.actions.space import ActionSpace, ActionTarget
from omniplug.types import DecoderInput

ADAPTERS = {  # catalogue entry in act.yaml -> the dataset its action space matches
    "act_words_tiny": "act_discrete",
    "act_tokens_tiny": "act_discrete",
    "act_bins_tiny": "act_continuous",
    "act_rvq_tiny": "act_continuous",
    "act_regress_tiny": "act_continuous",
}


# --- pieces ---------------------------------------------------------------------------------------
def test_bins_round_trip_within_half_a_bin():
    x = torch.linspace(-1, 1, 1001)
    for n in (2, 7, 256):
        err = (from_bins(to_bins(x, n), n) - x).abs().max()
        assert err <= 1.0 / n + 1e-6  # half of the bin width 2/n
    assert to_bins(torch.tensor([-5.0, 5.0]), 256).tolist() == [0, 255]


def test_normalizer_clips_and_counts_out_of_range():
    norm = Normalizer(2, low=[0.0, -2.0], high=[10.0, 2.0])
    x = norm.normalize(torch.tensor([[5.0, 0.0], [20.0, -3.0]]))
    assert torch.allclose(x, torch.tensor([[0.0, 0.0], [1.0, -1.0]]))
    assert norm.clipped == 2
    assert torch.allclose(norm.denormalize(torch.tensor([[-1.0, 1.0]])), torch.tensor([[0.0, 2.0]]))


def test_rvq_error_falls_while_fitting_and_with_levels():
    g = torch.Generator().manual_seed(0)
    data = torch.rand(400, 3, generator=g) * 2 - 1
    one = ResidualVQ(dim=3, levels=1, codebook_size=16)
    hist1 = one.fit(data, iters=8)
    assert hist1[-1] < hist1[0]
    two = ResidualVQ(dim=3, levels=3, codebook_size=16)
    hist3 = two.fit(data, iters=8)
    assert hist3[-1] < 0.5 * hist1[-1]
    recon = two.decode(two.encode(data))
    assert float(((recon - data) ** 2).sum(1).mean()) == pytest.approx(hist3[-1], rel=1e-4)
    with pytest.raises(RuntimeError, match="not fitted"):
        ResidualVQ(dim=3, levels=1, codebook_size=4).encode(data)


def test_action_target_chunk_repeats_the_last_action():
    t = ActionTarget(future=np.array([3, 1]))
    assert t.chunk(4).tolist() == [3, 1, 1, 1]
    assert t.chunk(1).tolist() == [3]


def test_episode_format_round_trip(tmp_path):
    space = ActionSpace(kind="continuous", dim=2, low=(-1.0, -1.0), high=(1.0, 1.0))
    rng = np.random.default_rng(0)
    eps = [Episode(frames=rng.integers(0, 255, (t + 1, 8, 8, 3), dtype=np.uint8),
                   actions=rng.normal(size=(t, 2)).astype(np.float32), rewards=rng.normal(size=t).astype(np.float32),
                   instruction=f"do {t}", seed=10 + t, success=t % 2 == 0) for t in (3, 4)]
    writer = EpisodeWriter(tmp_path / "d", env="reacher", action_space=space)
    for ep in eps:
        writer.add(ep)
    meta = writer.close()
    assert read_meta(tmp_path / "d") == meta and meta["steps"] == 7
    assert ActionSpace.from_json(meta["action_space"]) == space
    assert np.allclose(meta["stats"]["max"], np.concatenate([e.actions for e in eps]).max(0))
    records = read_index(tmp_path / "d")
    assert [r.seed for r in records] == [13, 14] and [r.success for r in records] == [False, True]
    for ep, rec in zip(eps, records):
        back = read_episode(tmp_path / "d", rec)
        assert np.array_equal(back.frames, ep.frames) and np.array_equal(back.actions, ep.actions)
        assert np.allclose(back.rewards, ep.rewards) and back.instruction == ep.instruction
        assert rec.total_return == pytest.approx(ep.total_return, rel=1e-6)
    assert [len(a) for a in read_actions(tmp_path / "d")] == [3, 4]
    with pytest.raises(FileExistsError):
        EpisodeWriter(tmp_path / "d", env="reacher", action_space=space)
    with pytest.raises(FileNotFoundError, match="demos collect"):
        read_meta(tmp_path)


# --- decoders inside OneModel -----------------------------------------------------------------------
def _build(tiny_dir, entry, *extra):
    from omniplug.build import build_dataset, build_model
    from omniplug.config import load_config

    cfg = load_config(tiny_dir / "act.yaml", [f"one_model.decoder={entry}", *extra])
    torch.manual_seed(0)
    return build_model(cfg), build_dataset(cfg, ADAPTERS[entry])


def _one_hot_logits(model, decoder, target):
    """Logits that say exactly the tokens ``answer_text(target)`` tokenizes to."""
    trigger = "".join(decoder.tokens)
    ids = model.tokenizer.encode(trigger + decoder.answer_text(target), special=True)[1:]
    logits = torch.full((1, decoder.answer_length, len(model.tokenizer)), -10.0)
    logits[0, torch.arange(len(ids)), torch.tensor(ids)] = 10.0
    return logits


@pytest.mark.parametrize("entry", ["act_words_tiny", "act_tokens_tiny", "act_bins_tiny", "act_rvq_tiny"])
def test_token_adapters_round_trip_actions(tiny_dir, entry):
    model, data = _build(tiny_dir, entry)
    dec = model.decoders["act"]
    for i in range(len(data)):
        target = data[i].targets["act"][0]
        inp = DecoderInput(prompts=torch.zeros(1, 1, 1), batch_index=torch.zeros(1, dtype=torch.long), batch_size=1,
                           answer_logits=_one_hot_logits(model, dec, target))
        got = dec.postprocess(dec(inp), inp)[0]
        want = target.chunk(dec.chunk)
        if dec.space.is_discrete:
            assert got.tolist() == want.tolist()
        elif entry == "act_bins_tiny":  # within half a bin, in environment units, inside the bounds
            low, high = dec.normalizer.low.numpy(), dec.normalizer.high.numpy()
            inside = np.clip(want, low, high)
            assert np.all(np.abs(got - inside) <= (high - low) / dec.num_bins / 2 + 1e-5)
        else:  # residual VQ: exactly its reconstruction, denormalised
            codes = dec.rvq.encode(dec.prepare_target(target, None).reshape(1, -1))
            recon = dec.normalizer.denormalize(dec.rvq.decode(codes).reshape(dec.chunk, -1))
            assert np.allclose(got, recon.numpy(), atol=1e-5)


def test_regression_output_is_denormalised(tiny_dir):
    model, _ = _build(tiny_dir, "act_regress_tiny")
    dec = model.decoders["act"]
    with torch.no_grad():
        last = dec.head[-1]
        last.weight.zero_()
        last.bias.copy_(torch.tensor([-1.0, 1.0]))  # normalised: the low end of dim 0, the high end of dim 1
    inp = DecoderInput(prompts=torch.randn(1, 1, dec.prompt_dim), batch_index=torch.zeros(1, dtype=torch.long), batch_size=1)
    got = dec.postprocess(dec(inp), inp)[0]
    assert np.allclose(got[0], [dec.normalizer.low[0].item(), dec.normalizer.high[1].item()], atol=1e-6)


@pytest.mark.parametrize("entry", list(ADAPTERS))
def test_adapter_forward_backward_save_load(tiny_dir, tmp_path, entry):
    from omniplug.build import build_model
    from omniplug.data.collate import Collator
    from omniplug.weights import load_trainable, save_trainable

    model, data = _build(tiny_dir, entry)
    dec = model.decoders["act"]
    assert dec.output_kind == "actions" and model.decoders["act"].tokens == ["<act>"]
    batch = Collator(model, max_length=128)([data[i] for i in range(3)])
    answer = model.tokenizer.decode(batch.input_ids[0][batch.labels[0] != -100].tolist())
    assert answer.startswith("<act>") and (dec.answer_length == 0) == (answer == "<act></s>")
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and any(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    assert out.decoder_outputs["act"].actions.shape[0] == 3

    with torch.no_grad():  # make the saved state differ from a fresh build
        for p in trained:
            p.add_(0.01)
    save_trainable(model, tmp_path / "w")
    # rebuilt WITHOUT the demonstrations: statistics and codebooks must come from the weights file
    extra = [f"decoder.{entry}.demos=null"] + ([] if dec.space.is_discrete else [f"decoder.{entry}.action_dim=2"])
    if dec.space.is_discrete:
        extra.append(f"decoder.{entry}.actions={list(dec.space.names)}")
    from omniplug.config import load_config

    cfg = load_config(tiny_dir / "act.yaml", [f"one_model.decoder={entry}", *extra])
    fresh = build_model(cfg)
    load_trainable(fresh, tmp_path / "w")
    for (name, a), (_, b) in zip(model.state_dict().items(), fresh.state_dict().items()):
        assert torch.equal(a, b), name
    model.eval()
    fresh.eval()
    gen_batch = Collator(model, for_generation=True)([data[i] for i in range(2)])
    g1 = model.generate(gen_batch, max_new_tokens=dec.answer_length + 1, answer_prefix="<act>")
    g2 = fresh.generate(gen_batch, max_new_tokens=dec.answer_length + 1, answer_prefix="<act>")
    for a, b in zip(g1.decoder_outputs["act"], g2.decoder_outputs["act"]):
        assert len(a) == 1 and np.allclose(a[0], b[0])
    if not dec.space.is_discrete:  # what leaves the decoder is in environment units, inside the data's range
        assert torch.equal(fresh.decoders["act"].normalizer.low, dec.normalizer.low)


def test_tiny_policy_overfits_a_handful_of_demo_steps(tiny_dir):
    from omniplug.data.collate import Collator

    model, data = _build(tiny_dir, "act_tokens_tiny")
    batch = Collator(model, max_length=128)([data[i] for i in range(3)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(12):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses


def test_action_weights_weigh_the_action_token_cross_entropy(tiny_dir):
    # act_tokens with action_weights: the token CE is the weighted mean (the weighted action's token counts
    # `weight` times); unweighted it is the plain mean; names outside the space and a missing token CE are refused
    from omniplug.config.schema import ConfigError
    from omniplug.actions.decoder import ActionOutput

    model, _ = _build(tiny_dir, "act_tokens_tiny", "decoder.act_tokens_tiny.token_loss_weight=1.0")
    dec = model.decoders["act"]
    names = list(dec.space.names)
    ids = torch.tensor([[dec._slot_ids[0][i][0]] for i in range(2)])  # two answers: actions 0 and 1
    logits = torch.randn(2, 1, len(model.tokenizer))
    out = ActionOutput(batch_index=torch.arange(2), actions=torch.zeros(2, 1), codes=torch.zeros(2, 1),
                       answer_ids=ids, answer_logits=logits)
    each = torch.nn.functional.cross_entropy(logits[:, 0], ids[:, 0], reduction="none")
    assert torch.allclose(dec.loss(out, [])["token_ce"], each.mean())
    weighted, _ = _build(tiny_dir, "act_tokens_tiny", "decoder.act_tokens_tiny.token_loss_weight=1.0",
                         f"decoder.act_tokens_tiny.action_weights={{{names[1]}: 3.0}}")
    got = weighted.decoders["act"].loss(out, [])["token_ce"]
    assert torch.allclose(got, (each[0] + 3 * each[1]) / 4)
    with pytest.raises(ConfigError, match="not actions of this space"):
        _build(tiny_dir, "act_tokens_tiny", "decoder.act_tokens_tiny.token_loss_weight=1.0",
               "decoder.act_tokens_tiny.action_weights={brake: 3.0}")
    with pytest.raises(ConfigError, match="set token_loss_weight > 0"):
        _build(tiny_dir, "act_tokens_tiny", f"decoder.act_tokens_tiny.action_weights={{{names[1]}: 3.0}}")


def test_action_bias_shifts_the_decoded_action_by_its_logit(tiny_dir):
    # action_bias adds to a named action's logit before the choice: a bias above the logit gap flips the decision,
    # one below it does not; unknown names are refused
    from omniplug.config.schema import ConfigError

    model, _ = _build(tiny_dir, "act_tokens_tiny")
    dec = model.decoders["act"]
    names = list(dec.space.names)
    logits = torch.full((1, 1, len(model.tokenizer)), -5.0)
    logits[0, 0, dec._slot_ids[0][0][0]] = 2.0  # action 0 leads action 1 by 1.5
    logits[0, 0, dec._slot_ids[0][1][0]] = 0.5
    assert int(dec._decode(logits)[0, 0]) == 0
    for bias, expected in ((1.4, 0), (1.6, 1)):
        biased, _ = _build(tiny_dir, "act_tokens_tiny", f"decoder.act_tokens_tiny.action_bias={{{names[1]}: {bias}}}")
        assert int(biased.decoders["act"]._decode(logits)[0, 0]) == expected, bias
    with pytest.raises(ConfigError, match="not actions of this space"):
        _build(tiny_dir, "act_tokens_tiny", "decoder.act_tokens_tiny.action_bias={brake: 1.0}")
    with pytest.raises(ConfigError, match="action_bias.*must be dict"):
        _build(tiny_dir, "act_tokens_tiny", f"decoder.act_tokens_tiny.action_bias={{{names[1]}: much}}")


def test_bad_action_configs_are_loud(tiny_dir):
    from omniplug.config.schema import ConfigError

    with pytest.raises(ConfigError, match="continuous"):
        _build(tiny_dir, "act_words_tiny", "decoder.act_words_tiny.demos=${base_dir}/act_demos/continuous")
    with pytest.raises(ConfigError, match="demos collect"):
        _build(tiny_dir, "act_bins_tiny", "decoder.act_bins_tiny.demos=null")


@pytest.mark.parametrize("config, decoders", [("configs/babyai/gotolocal.yaml", ("act_tokens", "act_words")),
                                              ("configs/driving/highway.yaml", ("act_tokens", "act_words")),
                                              ("configs/reacher/reacher.yaml", ("act_bins", "act_rvq", "act_regress")),
                                              ("configs/driving/continuous.yaml", ("act_bins", "act_rvq", "act_regress"))])
def test_shipped_agent_configs_build(tiny_dir, config, decoders):
    """The agent configs under configs/ build with each of their adapters (demos pointed at the tiny ones)."""
    from pathlib import Path

    from omniplug.build import build_model
    from omniplug.config import load_config

    root = Path(__file__).resolve().parents[1]
    kind = "continuous" if "reacher" in config or "continuous" in config else "discrete"
    demos = tiny_dir / "act_demos" / kind
    for decoder in decoders:
        demos_override = [] if "highway" in config else [f"decoder.{decoder}.demos={demos}"]  # tiny: BabyAI's
        if "continuous" in config:  # its reader is trained on demos that are not in the repository
            demos_override.append(f"encoder.state.reader={root / 'configs' / 'driving' / 'reader'}")
        cfg = load_config(root / config, [f"one_model.decoder={decoder}", *demos_override, "one_model.weights=null"])
        model = build_model(cfg)
        assert model.decoders["act"].space.kind == kind
        assert model.num_image_tokens == (49 if "babyai" in config else 1)  # one token per cell / per frame


def test_the_shipped_babyai_agent_acts_on_a_fresh_clone(tmp_path, capsys):
    """configs/babyai/gotolocal.yaml with its shipped weights: no demonstrations on disk (its decoders name the
    actions), it solves a mission typed on the command line and writes the rollout GIF."""
    pytest.importorskip("minigrid")
    from pathlib import Path

    from omniplug.cli import main

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "eval" / "metrics.json"
    assert main(["eval", "-c", str(root / "configs/babyai/gotolocal.yaml"), "--env",  # its env: agent view
                 "--episodes", "4", "--mission", "go to the red ball",
                 "--out", str(out), f"trainer.output_dir={tmp_path}"]) == 0
    report = json.loads(out.read_text())
    assert report["episodes"] == 4 and report["success_rate"] >= 0.75, report
    assert Image.open(tmp_path / "eval" / "rollouts.gif").n_frames > 3


def test_ensemble_votes_by_majority_ties_to_the_first_and_averages_continuous():
    from omniplug.envs.rollout import EnsemblePolicy

    vote = EnsemblePolicy.vote
    assert vote([np.array([4]), np.array([2]), np.array([2, 0])]).tolist() == [2]  # majority of first actions
    assert vote([np.array([3]), np.array([1]), np.array([1]), np.array([3])]).tolist() == [3]  # tie: first listed
    assert vote([None, np.array([0])]).tolist() == [0] and vote([None, None]) is None  # invalid answers abstain
    mean = vote([np.array([[0.2, -1.0], [9.0, 9.0]]), np.array([[0.4, 1.0]])])
    assert np.allclose(mean, [[0.3, 0.0]])

    class Fixed:
        history = 2

        def __init__(self, action):
            self.action = action

        def act(self, observations):
            return [np.array([self.action]) for _ in observations]

    ensemble = EnsemblePolicy([Fixed(1), Fixed(0), Fixed(0)])
    assert ensemble.history == 2 and [a.tolist() for a in ensemble.act([None, None])] == [[0], [0]]
    with pytest.raises(ValueError, match="at least 2"):
        EnsemblePolicy([Fixed(1)])

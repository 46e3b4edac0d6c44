"""The ``state`` encoder: a reader that estimates the state a frame shows, trained on stored states.

No simulator: synthetic episodes whose frames draw a dot at the stored (x, y)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.actions.episodes import Episode, EpisodeWriter, read_episode, read_index
from omniplug.actions.space import ActionSpace


def _dot_episodes(out, *, episodes: int = 24, steps: int = 9, size: int = 32, seed: int = 0,
                  columns: tuple[int, int] | None = None, pad_state: int = 0):
    """A 3x3 white dot moving at random; the state is its centre in [-1, 1] (x, y). ``columns``: the dot's x stays
    in [lo, hi) (a region of the frame); ``pad_state`` zeros appended to each state."""
    rng = np.random.default_rng(seed)
    lo, hi = columns or (2, size - 2)
    writer = EpisodeWriter(out, env="synthetic-dot", action_space=ActionSpace(kind="continuous", dim=2,
                                                                              low=(-1.0, -1.0), high=(1.0, 1.0)))
    for e in range(episodes):
        cells = np.stack([rng.integers(lo, hi, steps + 1), rng.integers(2, size - 2, steps + 1)], axis=1)
        frames = np.zeros((steps + 1, size, size, 3), dtype=np.uint8)
        for t, (x, y) in enumerate(cells):
            frames[t, y - 1:y + 2, x - 1:x + 2] = 255
        states = np.pad(cells / (size - 1) * 2 - 1, ((0, 0), (0, pad_state))).astype(np.float32)
        writer.add(Episode(frames=frames, actions=rng.uniform(-1, 1, (steps, 2)).astype(np.float32),
                           rewards=np.zeros(steps, np.float32), instruction="follow the dot", seed=seed + e,
                           success=True, states=states))
    writer.close()
    return out


@pytest.fixture(scope="module")
def dot_demos(tmp_path_factory):
    return _dot_episodes(tmp_path_factory.mktemp("state") / "demos")


def test_states_round_trip_through_the_episode_files(dot_demos):
    episode = read_episode(str(dot_demos), read_index(str(dot_demos))[0])
    assert episode.states is not None and episode.states.shape == (10, 2) and episode.states.dtype == np.float32
    with pytest.raises(ValueError, match=r"needs \(3, K\) states"):
        Episode(frames=np.zeros((3, 4, 4, 3), np.uint8), actions=np.zeros((2, 2)), rewards=np.zeros(2),
                instruction="x", seed=0, success=True, states=np.zeros((2, 2)))


def test_reader_learns_where_the_dot_is(dot_demos, tmp_path):
    from omniplug.actions.state_reader import train_state_reader

    torch.set_num_threads(1)
    report = train_state_reader(dot_demos, tmp_path / "reader", steps=300, val_episodes=4, image_size=32, width=16)
    assert len(report.mae) == 2
    assert all(m < 0.35 * b for m, b in zip(report.mae, report.baseline_mae)), report

    from omniplug.encoders.state import StateEncoder

    enc = StateEncoder(reader=str(report.out), dim=8)
    assert enc.num_tokens == 1 and enc.out_dim == 8
    episode = read_episode(str(dot_demos), read_index(str(dot_demos))[-1])
    pixels = enc.preprocess([Image.fromarray(f) for f in episode.frames[:3]])
    feats = enc(pixels)
    assert feats.tokens.shape == (3, 1, 8)
    enc.requires_grad_(True)  # what train_mode 2 does: the reader stays frozen, the linear map trains
    assert not any(p.requires_grad for p in enc.reader.parameters()) and enc.embed.weight.requires_grad
    feats.tokens.sum().backward()
    assert enc.embed.weight.grad is not None
    with pytest.raises(ValueError, match=r"expects \(N, 3, 32, 32\)"):
        enc(torch.zeros(1, 3, 16, 16))


def test_state_encoder_errors_say_what_to_do(tmp_path):
    from omniplug.encoders.state import StateEncoder

    with pytest.raises(FileNotFoundError, match="omniplug demos reader"):
        StateEncoder(reader=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs `reader: DIR`"):
        StateEncoder(from_scratch=True)
    with pytest.raises(ValueError, match="fourier"):
        StateEncoder(from_scratch=True, state_dim=2, image_size=16, fourier=-1)


def test_state_encoder_fourier_features():
    """fourier: F feeds the estimate with its sines and cosines at F octaves (pi, 2 pi, ...): two states 0.05 apart
    then differ in the token by more than their raw values do (fine continuous control needs that resolution)."""
    from omniplug.encoders.state import StateEncoder

    torch.manual_seed(0)
    plain = StateEncoder(from_scratch=True, state_dim=2, image_size=16)
    rich = StateEncoder(from_scratch=True, state_dim=2, image_size=16, fourier=4)
    assert rich.embed.in_features == 2 * (1 + 2 * 4) and plain.embed.in_features == 2
    pixels = torch.rand(3, 3, 16, 16)
    assert rich(pixels).tokens.shape == plain(pixels).tokens.shape == (3, 1, 128)
    a, b = torch.tensor([[0.30, -0.2]]), torch.tensor([[0.35, -0.2]])
    feats = [torch.cat([s, (s.unsqueeze(-1) * rich.bands).flatten(1).sin(), (s.unsqueeze(-1) * rich.bands).flatten(1).cos()], 1)
             for s in (a, b)]
    assert (feats[0] - feats[1]).norm() > 5 * (a - b).norm()
    with torch.no_grad():  # the forward pass builds exactly these features
        rich.reader.body[-1].weight.zero_()
        rich.reader.body[-1].bias.copy_(a[0])
        assert torch.allclose(rich(pixels[:1]).tokens[0, 0], rich.embed(feats[0])[0], atol=1e-6)


def test_reader_cli_and_demos_without_states(dot_demos, tmp_path, tiny_dir, capsys):
    from omniplug.actions.state_reader import train_state_reader
    from omniplug.cli import main

    assert main(["demos", "reader", "--data", str(dot_demos), "--out", str(tmp_path / "r"), "--steps", "3",
                 "--val-episodes", "2"]) == 0
    assert "held-out mean absolute error per dimension" in capsys.readouterr().out
    with pytest.raises(ValueError, match="has no states"):
        train_state_reader(tiny_dir / "act_demos" / "continuous", tmp_path / "q", steps=1, val_episodes=0)


def test_reacher_observations_carry_their_state():
    pytest.importorskip("mujoco")
    from omniplug.envs import make_env

    try:
        env = make_env("reacher")
        obs = env.reset(seed=0)
    except Exception as exc:  # no EGL on this machine
        pytest.skip(f"MuJoCo cannot render here: {exc}")
    q = env._env.unwrapped.data.qpos
    assert obs.state.shape == (6,) and np.allclose(obs.state[:2], [np.cos(q[0]), np.sin(q[0])], atol=1e-6)
    assert np.allclose(obs.state[4:], q[2:4], atol=1e-6)
    assert env.step(env.expert_action()).observation.state.shape == (6,)


def test_a_reader_trained_on_several_folders_reads_each(tmp_path):
    # the driving finding in small: a reader that saw the dot only on the left misplaces it on the right (where
    # a learner's own episodes go); trained on both folders it reads both
    from omniplug.actions.state_reader import train_state_reader
    from omniplug.cli import main

    torch.set_num_threads(1)
    left = _dot_episodes(tmp_path / "left", columns=(2, 14))
    right = _dot_episodes(tmp_path / "right", columns=(18, 30), seed=100)
    kwargs = dict(steps=300, val_episodes=4, image_size=32, width=16)
    alone = train_state_reader(left, tmp_path / "alone", **kwargs)
    both = train_state_reader([left, right], tmp_path / "both", **kwargs)
    assert both.frames == 2 * alone.frames  # each folder gives its training split

    def x_error(reader_dir):
        from omniplug.actions.state_reader import load_states
        from omniplug.encoders.state import StateReader

        reader = StateReader.load(reader_dir).eval()
        pixels, states = load_states(right, "val", val_episodes=4, max_episodes=None, image_size=32)
        with torch.no_grad():
            got = reader(pixels) * torch.tensor(reader.config.std) + torch.tensor(reader.config.mean)
        return float((got[:, 0] - states[:, 0]).abs().mean())

    assert x_error(tmp_path / "both") < 0.5 * x_error(tmp_path / "alone"), (x_error(tmp_path / "both"),
                                                                            x_error(tmp_path / "alone"))
    assert main(["demos", "reader", "--data", str(left), "--data", str(right), "--out", str(tmp_path / "cli"),
                 "--steps", "2", "--val-episodes", "2"]) == 0
    with pytest.raises(ValueError, match="states differ in size"):
        train_state_reader([left, _dot_episodes(tmp_path / "wide", episodes=3, pad_state=1)], tmp_path / "x",
                           steps=1, val_episodes=1)


def test_dropped_state_dimensions_do_not_reach_the_llm(dot_demos, tmp_path):
    from omniplug.actions.state_reader import train_state_reader
    from omniplug.encoders.state import StateEncoder

    torch.set_num_threads(1)
    report = train_state_reader(dot_demos, tmp_path / "reader", steps=2, val_episodes=2, image_size=32, width=16)
    torch.manual_seed(0)
    full = StateEncoder(reader=str(report.out), dim=8)
    torch.manual_seed(0)
    blind = StateEncoder(reader=str(report.out), dim=8, drop_dims=[1])  # y hidden
    left, right = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    left[..., 10:13, 4:7], right[..., 10:13, 25:28] = 1.0, 1.0  # the same row, other columns: x differs
    up, down = torch.zeros(1, 3, 32, 32), torch.zeros(1, 3, 32, 32)
    up[..., 4:7, 10:13], down[..., 25:28, 10:13] = 1.0, 1.0  # the same column, other rows: y differs
    with torch.no_grad():
        assert not torch.allclose(blind(left).tokens, blind(right).tokens)  # x still reaches it
        assert not torch.allclose(full(up).tokens, full(down).tokens)
        estimate = blind.perceive(up) * blind.keep
        assert float(estimate[0, 1]) == 0.0 and float(estimate[0, 0]) != 0.0
    with pytest.raises(ValueError, match="drop_dims"):
        StateEncoder(reader=str(report.out), dim=8, drop_dims=[2])
    with pytest.raises(ValueError, match="drop_dims"):
        StateEncoder(reader=str(report.out), dim=8, drop_dims=["y"])


def test_a_reader_standardised_like_another_can_replace_it(tmp_path):
    # a reader trained on other frames keeps the first one's state mean / std: the same state gives the agent the
    # same numbers through either, so it can replace the first under an agent trained on it
    from omniplug.actions.state_reader import train_state_reader
    from omniplug.cli import main
    from omniplug.encoders.state import StateReader

    torch.set_num_threads(1)
    left = _dot_episodes(tmp_path / "left", columns=(2, 14))
    right = _dot_episodes(tmp_path / "right", columns=(18, 30), seed=100)
    kwargs = dict(steps=2, val_episodes=2, width=16)  # 64 px, as the CLI reads
    first = train_state_reader(left, tmp_path / "first", **kwargs)
    own = train_state_reader(right, tmp_path / "own", **kwargs)
    like = train_state_reader(right, tmp_path / "like", standardise_like=first.out, **kwargs)
    first_cfg, own_cfg, like_cfg = (StateReader.load(r.out).config for r in (first, own, like))
    assert like_cfg.mean == first_cfg.mean and like_cfg.std == first_cfg.std
    assert own_cfg.mean[0] > first_cfg.mean[0] + 0.5  # without it the right-hand frames set their own mean
    assert main(["demos", "reader", "--data", str(right), "--out", str(tmp_path / "cli"), "--steps", "1",
                 "--val-episodes", "1", "--standardise-like", str(first.out)]) == 0
    assert StateReader.load(tmp_path / "cli").config.mean == first_cfg.mean
    wide = _dot_episodes(tmp_path / "wide", episodes=3, pad_state=1)
    with pytest.raises(ValueError, match="reads 2 state dimensions from 64 px frames, these demonstrations have 3 "
                                         "at 32 px"):
        train_state_reader(wide, tmp_path / "x", steps=1, val_episodes=1, image_size=32, standardise_like=first.out)


def test_a_reader_reads_frames_that_are_not_square(tmp_path):
    """Frames wider than high (highway's wide view) keep their size by default: the reader and the encoder read
    (N, 3, H, W) pixels, and a square input is refused with the shape it expected."""
    from omniplug.actions.state_reader import train_state_reader
    from omniplug.encoders.state import StateEncoder

    torch.set_num_threads(1)
    demos = _dot_episodes(tmp_path / "demos", episodes=8, steps=5, size=32)
    wide = tmp_path / "wide"  # the same episodes stretched to 16 x 48
    from omniplug.actions.episodes import EpisodeWriter

    writer = EpisodeWriter(wide, env="synthetic-dot", action_space=ActionSpace(kind="continuous", dim=2,
                                                                               low=(-1.0, -1.0), high=(1.0, 1.0)))
    for record in read_index(str(demos)):
        e = read_episode(str(demos), record)
        frames = np.stack([np.asarray(Image.fromarray(f).resize((48, 16))) for f in e.frames])
        writer.add(Episode(frames=frames, actions=e.actions, rewards=e.rewards, instruction=e.instruction,
                           seed=e.seed, success=True, states=e.states))
    writer.close()
    report = train_state_reader(wide, tmp_path / "reader", steps=5, val_episodes=2, width=8)
    enc = StateEncoder(reader=str(report.out), dim=8)
    assert (enc.image_size, enc.image_width) == (16, 48)
    pixels = enc.preprocess([Image.new("RGB", (160, 40))])
    assert pixels.shape == (1, 3, 16, 48) and enc(pixels).tokens.shape == (1, 1, 8)
    with pytest.raises(ValueError, match=r"expects \(N, 3, 16, 48\)"):
        enc(torch.zeros(1, 3, 16, 16))

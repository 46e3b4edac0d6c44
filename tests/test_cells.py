"""The ``cells`` encoder (a per-cell parser of grid-world frames) and policies that reason before acting.

Needs minigrid (``pip install 'omniplug[sim]'``): the parser learns from real BabyAI agent-view frames
and the symbolic grids stored with them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

minigrid = pytest.importorskip("minigrid")

from omniplug.actions.episodes import read_episode, read_index  # noqa: E402
from omniplug.envs.collect import collect_demos  # noqa: E402
from omniplug.envs.rollout import ModelPolicy, evaluate  # noqa: E402


@pytest.fixture(scope="module")
def agent_demos(tmp_path_factory):
    out = tmp_path_factory.mktemp("cells") / "demos"
    collect_demos("babyai-gotolocal", episodes=16, out=out, seed=21, env_options={"view": "agent"})
    return out


@pytest.fixture(scope="module")
def parser_dir(agent_demos, tmp_path_factory):
    from omniplug.actions.cell_parser import train_cell_parser

    torch.set_num_threads(1)
    report = train_cell_parser(agent_demos, tmp_path_factory.mktemp("cells") / "parser", steps=200, val_episodes=3)
    assert report.frames > 0 and report.steps == 200
    return report


def test_parser_reads_held_out_frames_cell_by_cell(parser_dir):
    """Trained on 13 episodes, it names object, colour and state of (nearly) every cell of 3 unseen ones."""
    assert parser_dir.cell_accuracy > 0.97, parser_dir
    assert set(parser_dir.attribute_accuracy) == {"object", "colour", "state"}
    assert (parser_dir.out / "parser.safetensors").is_file() and (parser_dir.out / "parser_config.json").is_file()


def test_cells_encoder_tokens(parser_dir, agent_demos):
    from omniplug.encoders.cells import CellsEncoder

    enc = CellsEncoder(parser=str(parser_dir.out), dim=16)
    assert enc.num_tokens == 49 and enc.out_dim == 16
    episode = read_episode(str(agent_demos), read_index(str(agent_demos))[0])
    pixels = enc.preprocess([Image.fromarray(f) for f in episode.frames[:2]])
    assert pixels.shape == (2, 3, 56, 56)
    feats = enc(pixels)
    assert feats.tokens.shape == (2, 49, 16) and feats.dense.shape == (2, 16, 7, 7)
    # two cells with the same content (the walls of the first row, say) get different tokens: position is in them
    grid = episode.grids[0]  # [x, y, attr]
    same = [(x, y) for x in range(7) for y in range(7) if np.array_equal(grid[x, y], grid[0, 0])]
    if len(same) > 1:
        (x0, y0), (x1, y1) = same[:2]
        assert not torch.allclose(feats.tokens[0, y0 * 7 + x0], feats.tokens[0, y1 * 7 + x1])
    # the parser stays frozen whatever the training mode asks; the class vectors and positions train
    enc.requires_grad_(True)
    assert not any(p.requires_grad for p in enc.parser.parameters())
    assert all(p.requires_grad for p in enc.tables.parameters()) and enc.position.requires_grad
    with pytest.raises(ValueError, match=r"expects \(N, 3, 56, 56\)"):
        enc(torch.zeros(1, 3, 32, 32))


def test_cells_encoder_errors_say_what_to_do(tmp_path):
    from omniplug.encoders.cells import CellsEncoder

    with pytest.raises(FileNotFoundError, match="omniplug demos parser"):
        CellsEncoder(parser=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="needs `parser: DIR`"):
        CellsEncoder()
    assert CellsEncoder(from_scratch=True, dim=8).parser.body[0].weight.requires_grad  # ablation: parser trains
    broken = tmp_path / "broken"
    CellsEncoder(from_scratch=True).parser.save(broken)
    (broken / "parser.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="does not load.*omniplug demos parser"):
        CellsEncoder(parser=str(broken))


def test_parser_cli_and_missing_grids(agent_demos, tmp_path, capsys):
    from omniplug.cli import main

    assert main(["demos", "parser", "--data", str(agent_demos), "--out", str(tmp_path / "p"), "--steps", "5",
                 "--val-episodes", "1"]) == 0
    assert "held-out cell accuracy" in capsys.readouterr().out
    top = tmp_path / "top"
    collect_demos("babyai-gotolocal", episodes=1, out=top, seed=11)  # full view: no egocentric grid
    from omniplug.actions.cell_parser import train_cell_parser

    with pytest.raises(ValueError, match="no symbolic grids"):
        train_cell_parser(top, tmp_path / "q", steps=1, val_episodes=0)


def _cells_config(tiny_dir, parser, demos, tmp_path, reasoning="where"):
    from omniplug.config import load_config

    path = tmp_path / "cells_act.yaml"
    path.write_text(f"""
includes: [{tiny_dir}/act.yaml]
encoder:
  cells_enc: {{type: cells, parser: "{parser}", dim: 32}}
dataset:
  babyai: {{type: demos, data_dir: "{demos}", reasoning: {reasoning}}}
decoder:
  act_babyai: {{type: act_tokens, demos: "{demos}"}}
one_model: {{encoder: cells_enc, decoder: act_babyai, image_position: after_text, train_mode: 2}}
data: {{train: {{act_discrete: 0, babyai: 1}}}}
""")
    return load_config(path)


def test_demos_with_reasoning_say_where_before_acting(agent_demos):
    from omniplug.data.babyai_where import mission_target, where_is
    from omniplug.data.demos import DemoDataset

    plain = DemoDataset(data_dir=str(agent_demos))
    ds = DemoDataset(data_dir=str(agent_demos), reasoning="where")
    episode = read_episode(str(agent_demos), read_index(str(agent_demos))[0])
    expected = where_is(episode.grids[0], *mission_target(episode.instruction))
    assert plain[0].turns[1].text == "<act>" and ds[0].turns[1].text == f"{expected} <act>"
    last = ds[episode.length - 1].turns[1].text  # the bot's last step: its target right ahead
    assert last in ("1 ahead <act>", "here <act>") or last.endswith("<act>")
    with pytest.raises(ValueError, match="reasoning must be"):
        DemoDataset(data_dir=str(agent_demos), reasoning="why")


def test_a_reasoning_policy_trains_and_acts_closed_loop(tiny_dir, parser_dir, agent_demos, tmp_path):
    """Built from YAML with the cells encoder: the loss of 'where ... <act>[action]' answers falls, and the
    rollout policy writes its reasoning and then acts (the setting read from the training demos)."""
    from omniplug.build import build_model
    from omniplug.data.collate import Collator
    from omniplug.data.demos import DemoDataset
    from omniplug.envs.rollout import demo_setting

    cfg = _cells_config(tiny_dir, parser_dir.out, agent_demos, tmp_path)
    assert demo_setting(cfg, "reasoning", "none") == "where"
    torch.manual_seed(0)
    model = build_model(cfg)
    assert not any(p.requires_grad for p in model.encoder.parser.parameters())
    data = DemoDataset(data_dir=str(agent_demos), reasoning="where")
    batch = Collator(model, max_length=128)([data[i] for i in range(4)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses

    policy = ModelPolicy(model, reasoning=True, reasoning_tokens=6)
    report = evaluate(policy, "babyai-gotolocal", episodes=1, seed=500, num_envs=1,
                      env_options={"max_steps": 2, "view": "agent"})
    assert report.policy_calls >= 1 and policy.last_texts
    if "<act>" not in policy.last_texts[-1]:  # an answer that never reaches <act> is no action: counted
        assert report.invalid_actions > 0

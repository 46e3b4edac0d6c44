"""Environments, experts, demonstration collection, the ``demos`` dataset and closed-loop rollouts.

BabyAI tests need minigrid and Reacher tests gymnasium[mujoco] (``pip install 'omniplug[sim]'``);
they are skipped when the simulator is not installed."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from omniplug.envs import make_env
from omniplug.envs.collect import collect_demos
from omniplug.envs.rollout import ModelPolicy, evaluate

minigrid = pytest.importorskip("minigrid")


@pytest.mark.parametrize("env_name", ["babyai-gotolocal", "babyai-pickuploc", "babyai-putnextlocal"])
def test_babyai_bot_solves_every_seed(env_name):
    report = evaluate("expert", env_name, episodes=6, seed=0, num_envs=3)
    assert report.success_rate == 1.0
    assert all(e.total_return > 0 and e.length >= 1 for e in report.episodes)


def test_babyai_observation_and_actions():
    env = make_env("babyai-gotolocal")
    obs = env.reset(seed=1)
    assert obs.image.shape == (64, 64, 3) and obs.image.dtype == np.uint8
    assert obs.instruction.startswith("go to")
    assert env.action_space.names[3] == "pick up" and env.max_steps > 0
    with pytest.raises(ValueError, match="outside"):
        env.step(9)
    agent = make_env("babyai-gotolocal", view="agent")
    assert agent.reset(seed=1).image.shape == (56, 56, 3)


def test_unknown_environment_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: .*babyai-gotolocal.*reacher"):
        make_env("babyai-gotolocl")


def test_collect_cli_writes_episodes_the_dataset_reads(tmp_path, capsys):
    from omniplug.cli import main
    from omniplug.data.demos import DemoDataset

    out = tmp_path / "demos"
    assert main(["demos", "collect", "--env", "babyai-gotolocal", "--episodes", "4", "--out", str(out), "--seed", "7"]) == 0
    assert "expert success 1.000" in capsys.readouterr().out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["env"] == "babyai-gotolocal" and meta["episodes"] == 4
    lines = (out / "episodes.jsonl").read_text().splitlines()
    assert [json.loads(x)["seed"] for x in lines] == [7, 8, 9, 10]
    ds = DemoDataset(data_dir=str(out), split="train", val_episodes=1)
    val = DemoDataset(data_dir=str(out), split="val", val_episodes=1)
    assert len(ds) + len(val) == meta["steps"]
    s = ds[0]
    assert isinstance(s.images[0], Image.Image) and s.images[0].size == (64, 64)
    assert s.turns[0].images == 1 and s.turns[0].text.startswith("go to") and s.turns[1].text == "<act>"
    first = s.targets["act"][0].future
    assert first.dtype == np.int64 and 0 <= first[0] < 7
    assert main(["demos", "info", str(out)]) == 0


def test_rollout_cli_expert_writes_metrics_and_gif(tmp_path):
    from omniplug.cli import main

    assert main(["demos", "rollout", "--expert", "--env", "babyai-gotolocal", "--episodes", "3", "--num-envs", "2",
                 "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["success_rate"] == 1.0 and metrics["episodes"] == 3 and len(metrics["per_episode"]) == 3
    gif = Image.open(tmp_path / "rollouts.gif")
    assert gif.n_frames > 2


def test_one_closed_loop_episode_with_a_tiny_model(tiny_dir, tmp_path):
    from omniplug.build import build_model

    model = build_model(tiny_dir / "act.yaml")  # act_tokens over BabyAI's seven actions, untrained
    calls = []
    policy = ModelPolicy(model)
    inner = policy.act
    policy.act = lambda obs: calls.append(len(obs)) or inner(obs)
    report = evaluate(policy, "babyai-gotolocal", episodes=2, seed=500, num_envs=2, env_options={"max_steps": 4},
                      gif=tmp_path / "r.gif", gif_episodes=2)
    assert len(report.episodes) == 2 and all(isinstance(e.success, bool) for e in report.episodes)
    assert all(1 <= e.length <= 4 for e in report.episodes)
    assert calls and calls[0] == 2  # both environments answered by one batched call
    assert report.invalid_actions == 0 and os.path.isfile(report.gif)
    assert set(report.summary()) >= {"success_rate", "mean_return", "mean_length"}


def test_reacher_expert_and_continuous_demos(tmp_path):
    pytest.importorskip("mujoco")
    try:
        env = make_env("reacher")
        obs = env.reset(seed=0)
    except Exception as exc:  # no EGL on this machine
        pytest.skip(f"MuJoCo cannot render here: {exc}")
    assert obs.image.shape == (64, 64, 3) and obs.image.std() > 0
    report = collect_demos("reacher", episodes=3, out=tmp_path / "r")
    assert report.success_rate == 1.0 and report.steps == 150
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["action_space"]["kind"] == "continuous" and len(meta["stats"]["q99"]) == 2
    assert all(-1.0 <= v <= 1.0 for v in meta["stats"]["min"] + meta["stats"]["max"])


def test_evaluate_config_builds_the_model_and_writes_a_gif(tiny_dir, tmp_path):
    from omniplug.envs.rollout import evaluate_config

    report = evaluate_config(tiny_dir / "act.yaml", ["one_model.decoder=act_words_tiny"], env="babyai-gotolocal",
                             episodes=1, num_envs=1, out_dir=tmp_path, env_options={"max_steps": 2})
    assert report.episodes[0].length <= 2 and report.policy_calls >= 1
    assert (tmp_path / "rollouts.gif").is_file()

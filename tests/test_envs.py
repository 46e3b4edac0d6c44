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
    from omniplug.envs.rollout import ConstantPolicy, evaluate

    expert = evaluate("expert", "reacher", episodes=2, num_envs=1)
    still = evaluate(ConstantPolicy([0.0, 0.0], env.action_space), "reacher", episodes=2, num_envs=1)
    # the expert ends on the target, the still arm where it started (the target is 5-20 cm from the start)
    assert expert.metric_means()["final_distance"] < 0.02 < still.metric_means()["final_distance"]


def test_evaluate_config_builds_the_model_and_writes_a_gif(tiny_dir, tmp_path):
    from omniplug.envs.rollout import evaluate_config

    report = evaluate_config(tiny_dir / "act.yaml", ["one_model.decoder=act_words_tiny"], env="babyai-gotolocal",
                             episodes=1, num_envs=1, out_dir=tmp_path, env_options={"max_steps": 2})
    assert report.episodes[0].length <= 2 and report.policy_calls >= 1
    assert (tmp_path / "rollouts.gif").is_file()


def test_frame_history_in_demos_and_in_rollouts_agree(tiny_dir, tmp_path):
    """history: k -> the last k frames (oldest first, the first frame repeated before the start), the same
    in the demos reader and in a closed-loop rollout."""
    from omniplug.build import build_model
    from omniplug.data.demos import DemoDataset
    from omniplug.envs.base import Observation

    out = tmp_path / "demos"
    collect_demos("babyai-gotolocal", episodes=2, out=out, seed=3, env_options={"view": "agent"})
    ds = DemoDataset(data_dir=str(out), history=3)
    from omniplug.actions.episodes import read_episode, read_index
    episode = read_episode(str(out), read_index(str(out))[0])
    frames = lambda sample: [np.asarray(im) for im in sample.images]  # noqa: E731
    assert ds[0].turns[0].images == 3
    assert all(np.array_equal(f, episode.frames[0]) for f in frames(ds[0]))  # before the start: the first frame
    t = min(2, episode.length - 1)
    expected = [episode.frames[max(t - j, 0)] for j in (2, 1, 0)]
    assert all(np.array_equal(a, b) for a, b in zip(frames(ds[t]), expected))
    with pytest.raises(ValueError, match="history must be >= 1"):
        DemoDataset(data_dir=str(out), history=0)

    model = build_model(tiny_dir / "act.yaml")
    policy = ModelPolicy(model, history=3)
    a, b, c = (np.full((8, 8, 3), v, dtype=np.uint8) for v in (1, 2, 3))
    assert [f[0, 0, 0] for f in policy.frames(Observation(image=c, instruction="x"))] == [3, 3, 3]
    assert [f[0, 0, 0] for f in policy.frames(Observation(image=c, instruction="x", history=(b,)))] == [2, 2, 3]
    assert [f[0, 0, 0] for f in policy.frames(Observation(image=c, instruction="x", history=(a, a, b)))] == [1, 2, 3]

    seen = []
    inner = policy.act
    policy.act = lambda obs: seen.extend(obs) or inner(obs)
    evaluate(policy, "babyai-gotolocal", episodes=1, seed=500, num_envs=1,
             env_options={"max_steps": 3, "view": "agent"})
    assert [len(o.history) for o in seen] == [0, 1, 2][:len(seen)] and len(seen) >= 2
    assert np.array_equal(seen[1].history[-1], seen[0].image)  # the frame before is the one acted on


def test_evaluate_config_reads_the_history_of_the_training_demos(tiny_dir, tmp_path):
    from omniplug.config import load_config
    from omniplug.envs.rollout import demo_history

    cfg = load_config(tiny_dir / "act.yaml")
    assert demo_history(cfg) == 1
    name = next(n for n in cfg.data.train if cfg.catalogues["dataset"][n].type == "demos")
    assert demo_history(load_config(tiny_dir / "act.yaml", [f"dataset.{name}.history=2"])) == 2


def test_agent_view_grids_are_stored_and_answer_where_questions(tmp_path):
    """The symbolic grid is the rendered view's own: its objects sit on the coloured tiles of the frame, and
    babyai_where answers from it with the nearest matching object."""
    from omniplug.actions.episodes import read_episode, read_index
    from omniplug.data.babyai_where import COLOURS, OBJECTS, BabyAIWhereDataset, mission_target, where_is

    out = tmp_path / "demos"
    collect_demos("babyai-gotolocal", episodes=3, out=out, seed=11, env_options={"view": "agent"})
    episode = read_episode(str(out), read_index(str(out))[0])
    assert episode.grids is not None and episode.grids.shape == (episode.length + 1, 7, 7, 3)
    names = {v: k for k, v in COLOURS.items()}
    hue = {"red": lambda r, g, b: r - np.maximum(g, b), "green": lambda r, g, b: g - np.maximum(r, b),
           "blue": lambda r, g, b: b - np.maximum(r, g), "purple": lambda r, g, b: b - g,
           "yellow": lambda r, g, b: np.minimum(r, g) - b}
    checked = 0
    for grid, frame in zip(episode.grids, episode.frames.astype(int)):
        for x, y in zip(*np.nonzero(np.isin(grid[..., 0], list(OBJECTS.values())))):
            colour = names[int(grid[x, y, 1])]
            if colour in hue:  # the object's colour is drawn in its 8x8 tile: column x, row y
                tile = frame[y * 8:(y + 1) * 8, x * 8:(x + 1) * 8].reshape(-1, 3)
                assert hue[colour](*tile.T).max() > 60, (x, y, colour)
                checked += 1
    assert checked > 0

    empty = np.zeros((7, 7, 3), dtype=np.uint8)
    assert where_is(empty, "red", "ball") == "not in view"
    g = empty.copy()
    g[1, 4] = (OBJECTS["ball"], COLOURS["red"], 0)  # 2 ahead, 2 left
    g[4, 5] = (OBJECTS["ball"], COLOURS["red"], 0)  # 1 ahead, 1 right: nearer
    g[3, 5] = (OBJECTS["key"], COLOURS["red"], 0)  # right ahead, but a key
    assert where_is(g, "red", "ball") == "1 ahead 1 right" and where_is(g, "red", "key") == "1 ahead"
    assert mission_target("go to a purple box") == ("purple", "box")
    with pytest.raises(ValueError, match="no '<colour> <object>'"):
        mission_target("go somewhere")

    ds = BabyAIWhereDataset(data_dir=str(out))
    assert len(ds) == sum(r.length + 1 for r in read_index(str(out)))
    s = ds[len(ds) - 1]  # the last frame of an episode: the bot stopped facing its target
    colour, kind = mission_target(read_index(str(out))[-1].instruction)
    assert s.turns[0].text == f"where is the {colour} {kind}?" and s.turns[1].text == "1 ahead"
    top = tmp_path / "top"
    collect_demos("babyai-gotolocal", episodes=1, out=top, seed=11)  # full view: no egocentric grid
    with pytest.raises(ValueError, match="no symbolic grids"):
        BabyAIWhereDataset(data_dir=str(top))


def test_a_typed_mission_finds_its_episodes_and_rolls_them_out(tmp_path):
    from omniplug.envs.rollout import mission_seeds

    seeds = mission_seeds("babyai-gotolocal", "Go to the red ball.", count=2, seed=0)
    env = make_env("babyai-gotolocal")
    assert len(seeds) == 2 and seeds[0] < seeds[1]
    assert all(env.reset(s).instruction == "go to the red ball" for s in seeds)
    report = evaluate("expert", "babyai-gotolocal", episodes=99, seeds=seeds, gif=tmp_path / "r.gif")
    assert [e.seed for e in report.episodes] == seeds and report.success_rate == 1.0
    assert Image.open(tmp_path / "r.gif").width > 2 * 64  # both episodes side by side
    with pytest.raises(ValueError, match="missions it has: 'go to the"):
        mission_seeds("babyai-gotolocal", "fly to the moon", seed=0, tries=30)


def test_eval_mission_without_an_environment_is_refused(tiny_dir, capsys):
    from omniplug.cli import main

    assert main(["eval", "-c", str(tiny_dir / "act.yaml"), "--mission", "go to the red ball"]) == 2
    assert "give --env too" in capsys.readouterr().err


def test_dagger_collection_lets_the_policy_drive_and_the_expert_label(tiny_dir, tmp_path, capsys):
    """The policy's actions move the episode, the stored labels are the expert's: an always-`left` policy spins
    in place (the frames of its episode repeat every 4 steps) while every label is the bot's."""
    from omniplug.actions.episodes import read_index
    from omniplug.cli import main
    from omniplug.envs.collect import run_labelled_episode
    from omniplug.envs.rollout import ConstantPolicy

    env = make_env("babyai-gotolocal", max_steps=8)
    expert = run_labelled_episode(env, None, seed=3)[0]
    spin = ConstantPolicy("left", env.action_space)
    episode, agreed = run_labelled_episode(env, spin, seed=3)
    assert episode.length == 8 and not episode.success  # turning never reaches the object
    assert np.array_equal(episode.frames[0], episode.frames[4]) and np.array_equal(episode.frames[1], episode.frames[5])
    assert list(episode.actions[:expert.length]) != [0] * min(expert.length, 8)  # labels: the bot's, not `left`
    assert agreed == int(np.sum(episode.actions == 0))
    drive = run_labelled_episode(env, spin, seed=3, expert_share=1.0, rng=np.random.default_rng(0))[0]
    assert drive.success and np.array_equal(drive.actions, expert.actions)  # beta 1: the expert drives
    # the command: a model drives (tiny, untrained), overrides go to its config
    out = tmp_path / "dagger"
    assert main(["demos", "collect", "--env", "babyai-gotolocal", "--episodes", "2", "--out", str(out),
                 "--option", "max_steps=3", "-c", str(tiny_dir / "act.yaml"), "one_model.decoder=act_words_tiny"]) == 0
    said = capsys.readouterr().out
    assert "policy success" in said and "expert's action on" in said
    records = read_index(out)  # an episode ends at max_steps=3, or earlier if the untrained policy stumbles on success
    assert len(records) == 2 and all(r.length == 3 or (r.success and r.length < 3) for r in records)
    assert main(["demos", "collect", "--env", "babyai-gotolocal", "--episodes", "1", "--out", str(tmp_path / "x"),
                 "one_model.decoder=act_words_tiny"]) == 2
    assert "need a model config (-c)" in capsys.readouterr().err
    assert main(["demos", "collect", "--env", "babyai-gotolocal", "--episodes", "1", "--out", str(tmp_path / "x"),
                 "--expert-share", "0.5"]) == 2
    assert "--expert-share needs a driver besides the expert" in capsys.readouterr().err
    # a constant action drives, the expert takes half the steps and labels every one
    out = tmp_path / "forward"
    assert main(["demos", "collect", "--env", "babyai-gotolocal", "--episodes", "2", "--out", str(out), "--option",
                 "max_steps=4", "--constant", "forward", "--expert-share", "0.5"]) == 0
    assert "policy success" in capsys.readouterr().out and len(read_index(out)) == 2
    assert main(["demos", "collect", "--env", "babyai-gotolocal", "--episodes", "1", "--out", str(tmp_path / "z"),
                 "--constant", "jump"]) == 2
    assert "constant action 'jump' is not one of" in capsys.readouterr().err and not (tmp_path / "z").exists()
    # a policy of another action space (continuous bins on BabyAI's 7 actions): refused before anything is written
    assert main(["demos", "collect", "--env", "babyai-gotolocal", "--episodes", "1", "--out", str(tmp_path / "y"),
                 "-c", str(tiny_dir / "act.yaml"), "one_model.decoder=act_bins_tiny"]) == 2
    assert "the policy acts in" in capsys.readouterr().err and not (tmp_path / "y").exists()


def test_demos_dataset_reads_several_folders_and_refuses_mixed_action_spaces(tmp_path):
    from omniplug.config import load_config
    from omniplug.data.demos import DemoDataset

    a, b = tmp_path / "expert", tmp_path / "dagger1"
    collect_demos("babyai-gotolocal", episodes=3, out=a, seed=0)
    collect_demos("babyai-gotolocal", episodes=2, out=b, seed=50)
    one = DemoDataset(data_dir=str(a), split="train", val_episodes=1)
    both = DemoDataset(data_dir=[str(a), str(b)], split="train", val_episodes=1)
    assert [e.seed for e in both.episodes] == [0, 1, 50]  # each folder keeps its own last episode for val
    assert len(both) == len(one) + both.episodes[-1].length
    assert [e.seed for e in DemoDataset(data_dir=[str(a), str(b)], split="val", val_episodes=1).episodes] == [2, 51]
    from pathlib import Path

    from omniplug.registry import DATASETS

    config = Path(__file__).resolve().parents[1] / "configs/driving/highway.yaml"
    spec = load_config(config, [f"dataset.highway_val.data_dir=[{a},{b}]", "dataset.highway_val.val_episodes=1"])
    params = spec.catalogues["dataset"]["highway_val"].params
    assert [e.seed for e in DATASETS.get("demos")(**params).episodes] == [2, 51]  # a list from YAML / overrides
    pytest.importorskip("mujoco")
    try:
        collect_demos("reacher", episodes=1, out=tmp_path / "reacher")
    except Exception as exc:  # no EGL on this machine
        pytest.skip(f"MuJoCo cannot render here: {exc}")
    with pytest.raises(ValueError, match="another action space"):
        DemoDataset(data_dir=[str(a), str(tmp_path / "reacher")])


def test_an_agent_config_records_its_environment(tiny_dir, tmp_path, capsys):
    """`env: {name, options}` in an agent's config: `--env` alone (eval, serve) and `demos rollout/collect -c`
    without --env use it, command-line options go on top, another environment is refused, and mistakes in the
    section fail when the config loads."""
    from omniplug.cli import main
    from omniplug.config import ConfigError, load_config
    from omniplug.envs.base import env_for
    from omniplug.actions.episodes import read_index

    act = str(tiny_dir / "act.yaml")
    recorded = "env={name: babyai-gotolocal, options: {view: agent, max_steps: 3}}"
    cfg = load_config(act, [recorded])
    assert env_for(cfg) == ("babyai-gotolocal", {"view": "agent", "max_steps": 3})
    assert env_for(cfg, "", {"max_steps": 2}) == ("babyai-gotolocal", {"view": "agent", "max_steps": 2})
    assert env_for(cfg, "babyai-gotolocal") == env_for(cfg)
    with pytest.raises(ValueError, match="an agent for 'babyai-gotolocal'.*env.name=highway"):
        env_for(cfg, "highway")
    with pytest.raises(ValueError, match="records no environment"):
        env_for(load_config(act))
    with pytest.raises(ConfigError, match="unknown environment 'babyai-gotolokal'.*babyai-gotolocal"):
        load_config(act, ["env.name=babyai-gotolokal"])
    with pytest.raises(ConfigError, match="unknown key 'veiw'"):
        load_config(act, ["env={name: babyai-gotolocal, options: {veiw: agent}}"])
    with pytest.raises(ConfigError, match="needs env.name"):
        load_config(act, ["env.options={view: agent}"])
    # the commands, with no environment named: the config's (3-step episodes), --option on top (2 steps)
    words = "one_model.decoder=act_words_tiny"
    out = tmp_path / "roll"
    assert main(["demos", "rollout", "-c", act, words, recorded, "--episodes", "2", "--num-envs", "2",
                 "--out", str(out)]) == 0
    played = json.loads((out / "metrics.json").read_text())["per_episode"]  # max_steps 3 (or an early success)
    assert len(played) == 2 and all(e["length"] == 3 or (e["success"] and e["length"] < 3) for e in played)
    assert main(["demos", "collect", "-c", act, words, recorded, "--option", "max_steps=2", "--episodes", "1",
                 "--out", str(tmp_path / "dagger")]) == 0
    assert [r.length == 2 or (r.success and r.length < 2) for r in read_index(tmp_path / "dagger")] == [True]
    assert json.loads((tmp_path / "dagger" / "meta.json").read_text())["options"]["view"] == "agent"
    capsys.readouterr()
    assert main(["eval", "-c", act, words, f"trainer.output_dir={tmp_path}", "--env", "--episodes", "1"]) == 2
    assert "records no environment" in capsys.readouterr().err
    assert main(["eval", "-c", act, recorded, "--env", words]) == 2  # an override after a bare --env
    assert "looks like a config override" in capsys.readouterr().err
    assert main(["eval", "-c", act, words, recorded, "--env", "highway", "--episodes", "1"]) == 2
    assert "not 'highway'" in capsys.readouterr().err

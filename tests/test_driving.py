"""Driving (issue 26): highway-env with language missions and highway-env's own IDM/MOBIL driver as the expert.
The expert finishes each mission without crashing, episodes carry the driving measures, demonstrations round-trip
through the demos reader, and bad missions or options fail with the reason."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("highway_env")

from omniplug.envs import make_env  # noqa: E402
from omniplug.envs.collect import run_expert_episode  # noqa: E402


@pytest.mark.parametrize("mission", ["cruise", "keep_right", "overtake"])
def test_the_expert_completes_each_mission_without_crashing(mission):
    env = make_env("highway", mission=mission, duration=20)
    try:
        for seed in (0, 1):
            episode = run_expert_episode(env, seed=seed)
            metrics = env.episode_metrics()
            assert episode.success and metrics["crashed"] == 0.0, (mission, seed, metrics)
            assert metrics[f"success_{mission}"] == 1.0 and metrics["mean_speed"] > 10 and metrics["distance"] > 100
            assert episode.instruction == {"cruise": "drive on without crashing", "keep_right": "keep to the right lane",
                                           "overtake": "overtake the car ahead"}[mission]
        if mission == "keep_right":
            assert metrics["right_lane_share"] >= 0.8
    finally:
        env.close()


def test_two_decisions_a_second_halve_the_step_and_the_expert_still_drives():
    slow, fast = make_env("highway", mission="cruise", duration=10), \
        make_env("highway", mission="cruise", duration=10, decisions_per_second=2)
    try:
        assert (slow.max_steps, fast.max_steps) == (10, 20)
        slow.reset(3), fast.reset(3)
        x0 = fast.ego.position[0]
        slow.step(1), fast.step(1)  # idle: one decision covers 1 s, or 0.5 s
        assert fast.ego.position[0] - x0 == pytest.approx((slow.ego.position[0] - x0) / 2, rel=0.15)
        episode = run_expert_episode(fast, seed=3)
        assert episode.success and len(episode.actions) == 20 and not fast.ego.crashed
    finally:
        slow.close(), fast.close()


def test_observations_actions_and_the_continuous_expert():
    env = make_env("highway", mission="random", actions="continuous", duration=4, image_size=48)
    try:
        obs = env.reset(5)
        assert obs.image.shape == (48, 48, 3) and obs.image.dtype == np.uint8 and obs.image.std() > 5  # not black
        assert obs.state.shape == (27,) and obs.state[0] == 1.0  # the ego car is present
        assert obs.state[25] == pytest.approx(env.ego.speed / 40) and obs.state[26] == 0.0  # no set speed: continuous
        assert env.action_space.kind == "continuous" and env.max_steps == 20
        episode = run_expert_episode(env, seed=5)
        assert episode.actions.shape == (20, 2) and np.abs(episode.actions).max() <= 1.0 and not env.ego.crashed
        missions = {make_env("highway", duration=1).reset(s).instruction for s in range(12)}
        assert len(missions) == 3  # random: one mission per seed, all three drawn
    finally:
        env.close()
    meta = make_env("highway", duration=2)
    assert meta.action_space.names == ("lane_left", "idle", "lane_right", "faster", "slower")
    frame = meta.reset(0).image
    speed = (frame[-4:-2, :, 0] > 200) & (frame[-4:-2, :, 2] < 100)  # the dashboard: yellow speed bar
    cruise = frame[-2:, :, 2] == 255  # white set-speed bar
    assert speed[0].sum() == round(64 * (meta.ego.speed - 10) / 25) and cruise[0].sum() == round(64 * (meta.set_speed() - 10) / 25)
    faster = meta.step(3).observation  # faster: the set speed goes up a step, the bar with it
    assert (faster.image[-1, :, 2] == 255).sum() > cruise[0].sum() and faster.state[26] > meta.reset(0).state[26]
    blind = make_env("highway", duration=2, speedometer=False).reset(0).image
    assert not np.array_equal(blind[-4:], frame[-4:]) and np.array_equal(blind[:-4], frame[:-4])
    with pytest.raises(ValueError, match="meta-action 7 is not one of 0..4"):
        meta.step(7)


def test_bad_missions_and_options_fail_clearly(monkeypatch):
    from omniplug.config.schema import ConfigError

    with pytest.raises(ConfigError, match="mission.*'cruise', 'keep_right', 'overtake'.*'take_exit'"):
        make_env("highway", mission="take_exit")
    with pytest.raises(ConfigError, match="actions.*'meta', 'continuous'.*'wheel'"):
        make_env("highway", actions="wheel")
    with pytest.raises(ValueError, match="lanes >= 2"):
        make_env("highway", lanes=1)
    with pytest.raises(ConfigError, match="lanez"):
        make_env("highway", lanez=3)
    with pytest.raises(ValueError, match="decisions_per_second must be 1, 2 or 5"):
        make_env("highway", decisions_per_second=3)
    with pytest.raises(ValueError, match="decisions_per_second is an option of meta-actions"):
        make_env("highway", actions="continuous", decisions_per_second=2)
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")
    with pytest.raises(RuntimeError, match="black frames"):
        make_env("highway")


def test_demos_of_driving_round_trip_and_evaluation_reports_driving_measures(tmp_path, capsys):
    from omniplug.cli import main
    from omniplug.data.demos import DemoDataset

    out = tmp_path / "demos"
    assert main(["demos", "collect", "--env", "highway", "--episodes", "2", "--out", str(out), "--seed", "3",
                 "--option", "duration=5", "--option", "mission=cruise"]) == 0
    assert "expert success 1.000" in capsys.readouterr().out
    sample = DemoDataset(data_dir=str(out), split="train", val_episodes=1)[0]
    assert sample.turns[0].text == "drive on without crashing" and sample.images[0].size == (64, 64)
    assert 0 <= int(sample.targets["act"][0].future[0]) < 5 and sample.turns[1].text == "<act>"
    said = DemoDataset(data_dir=str(out), reasoning="narrate")  # say why, then act
    answers = [said[i].turns[1].text for i in range(len(said))]
    reasons = ("slow down", "speed up", "keep the lane and the speed", "change lane", "changing lane")
    for i, answer in enumerate(answers):
        why, act = answer.rsplit(" ", 1)
        assert act == "<act>" and any(r in why for r in reasons), answer
        action = int(said[i].targets["act"][0].future[0])
        if "slow down" in why:
            assert action == 4
        if "speed up" in why:
            assert action == 3
    assert main(["demos", "rollout", "--expert", "--env", "highway", "--episodes", "2", "--num-envs", "2", "--seed", "200",
                 "--option", "duration=5", "--out", str(tmp_path / "roll")]) == 0
    with pytest.raises(ValueError, match="needs the expert's narrations"):
        DemoDataset(data_dir=str(_babyai_demos(tmp_path)), reasoning="narrate")
    metrics = json.loads((tmp_path / "roll" / "metrics.json").read_text())
    assert metrics["crashed"] == 0.0 and metrics["mean_speed"] > 10 and "right_lane_share" in metrics
    assert all("distance" in e["metrics"] for e in metrics["per_episode"])
    assert Image.open(tmp_path / "roll" / "rollouts.gif").n_frames > 2
    assert main(["demos", "rollout", "--constant", "idle", "--env", "highway", "--episodes", "2", "--num-envs", "1",
                 "--seed", "200", "--option", "duration=5", "--out", str(tmp_path / "idle")]) == 0
    idle = json.loads((tmp_path / "idle" / "metrics.json").read_text())
    assert idle["lane_changes"] == 0.0 and idle["policy_calls"] == 10
    capsys.readouterr()
    assert main(["demos", "rollout", "--constant", "brake", "--env", "highway", "--episodes", "1", "--out",
                 str(tmp_path / "x")]) != 0
    assert "constant action 'brake' is not one of" in capsys.readouterr().err


def _babyai_demos(tmp_path):
    """Demonstrations of an environment whose expert does not narrate."""
    from omniplug.envs.collect import collect_demos

    pytest.importorskip("minigrid")
    collect_demos("babyai-gotolocal", episodes=1, out=tmp_path / "babyai")
    return tmp_path / "babyai"



def test_the_shipped_driving_agent_drives_a_typed_mission(tmp_path):
    """configs/driving/highway.yaml with its shipped weights and reader, no demonstrations on disk: a mission typed
    on the command line, driven with the driving measures and a GIF; the blind `idle` baseline crashes on these
    seeds within 20 s while the agent does not (held-out seeds, both measured when the weights were shipped)."""
    from pathlib import Path

    from omniplug.cli import main
    from omniplug.envs.rollout import ConstantPolicy, evaluate, mission_seeds

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "eval" / "metrics.json"
    assert main(["eval", "-c", str(root / "configs/driving/highway.yaml"), "--env", "--episodes", "4",
                 "--mission", "drive on without crashing", "--env-option", "duration=20", "--seed", "100000",
                 "--out", str(out), f"trainer.output_dir={tmp_path}"]) == 0
    report = json.loads(out.read_text())
    seeds = mission_seeds("highway", "drive on without crashing", count=4, seed=100_000, env_options={"duration": 20})
    assert [e["seed"] for e in report["per_episode"]] == seeds and "mean_speed" in report
    idle = evaluate(ConstantPolicy("idle", make_env("highway", duration=1).action_space), "highway", seeds=seeds,
                    episodes=4, env_options={"duration": 20})
    assert report["crashed"] < idle.metric_means()["crashed"], (report, idle.summary())
    assert Image.open(tmp_path / "eval" / "rollouts.gif").n_frames > 5


def test_the_longest_narration_fits_the_rollout_reasoning_budget():
    """A `reasoning: narrate` policy may speak ModelPolicy's reasoning_tokens before <act>; every narration of the
    driving expert must fit in them with the space before the trigger (else the rollout gets no action)."""
    import inspect
    from pathlib import Path

    from transformers import AutoTokenizer

    from omniplug.envs.highway import driving_texts
    from omniplug.envs.rollout import ModelPolicy

    budget = inspect.signature(ModelPolicy).parameters["reasoning_tokens"].default
    tok = AutoTokenizer.from_pretrained(Path(__file__).resolve().parents[1] / "configs/driving/base/llama")
    longest = max(len(tok(text + " ", add_special_tokens=False).input_ids) for text in driving_texts())
    assert 15 <= longest < budget, (longest, budget)


def test_a_mission_the_options_rule_out_is_refused_quickly():
    from omniplug.envs.rollout import mission_seeds

    env = make_env("highway", duration=1)
    right = [s for s in range(0, 40) if env.reset(s).instruction == "keep to the right lane"][:2]
    assert mission_seeds("highway", "Keep to the right lane.", count=2, seed=0) == right
    with pytest.raises(ValueError, match=r"seeds 0\.\.199 .*missions it has: 'drive on without crashing'"):
        mission_seeds("highway", "keep to the right lane", env_options={"mission": "cruise", "duration": 1}, seed=0)


@pytest.mark.parametrize("where, kind", [((4.0, 0.0), "into_ahead"), ((-4.0, 0.0), "from_behind"),
                                         ((1.0, 1.5), "side")])
def test_a_crash_is_told_apart_by_where_the_other_car_was(where, kind):
    env = make_env("highway", mission="cruise", duration=5)
    try:
        env.reset(7)
        metrics = env.episode_metrics()
        assert metrics["crashed"] == 0.0 and all(metrics[f"crash_{k}"] == 0.0 for k in
                                                 ("into_ahead", "from_behind", "side", "off_road"))
        ego = env.ego
        other = min((v for v in env.road.vehicles if v is not ego), key=lambda v: abs(v.position[0] - ego.position[0]))
        other.position = ego.position + np.array(where)  # overlapping the ego car: they collide on the next step
        other.heading, other.speed = ego.heading, ego.speed
        other.lane_index = other.target_lane_index = ego.lane_index  # no steering back to its own lane
        other.lane = ego.lane
        step = env.step(1)  # idle
        metrics = env.episode_metrics()
        assert step.done and not step.success and metrics["crashed"] == 1.0, metrics
        assert {k: v for k, v in metrics.items() if k.startswith("crash_") and v} == {f"crash_{kind}": 1.0}
    finally:
        env.close()


def test_the_state_units_are_the_metres_and_speeds_on_the_road():
    """X_METRES / VX_METRES_PER_S turn the state's kinematics back into metres and m/s: every neighbour row is a
    car on the road at that offset and closing speed (benchmarks that report metres rely on it)."""
    from omniplug.envs.highway import SPEED_SCALE, VX_METRES_PER_S, X_METRES

    env = make_env("highway", mission="cruise", duration=5)
    try:
        for seed in (3, 4, 5):
            state = env.reset(seed).state
            ego, rows = env.ego, state[:25].reshape(5, 5)
            assert rows[0, 0] == 1.0 and state[25] * SPEED_SCALE == pytest.approx(ego.speed, abs=1e-3)
            offsets = [(v.position - ego.position, v.velocity - ego.velocity)
                       for v in env.road.vehicles if v is not ego]
            present = [row for row in rows[1:] if row[0] > 0.5]
            assert present
            for row in present:
                dx, dvx = row[1] * X_METRES, row[3] * VX_METRES_PER_S
                assert min(abs(d[0] - dx) + abs(v[0] - dvx) for d, v in offsets) < 0.05, (seed, dx, dvx)
    finally:
        env.close()


def test_brake_room_makes_the_expert_slow_down_before_a_lane_change():
    """A car a few metres ahead in the ego lane, the right lane free: the expert (keep right) plans the lane change
    and says lane_right; with brake_room it says slower first."""
    answers = {}
    for brake_room in (0.0, 8.0):
        env = make_env("highway", mission="keep_right", duration=5, brake_room=brake_room)
        try:
            for seed in range(50):  # a start off the rightmost lane
                env.reset(seed)
                ego, road = env.ego, env.road
                lane = ego.lane_index
                right = (lane[0], lane[1], lane[2] + 1)
                if right in road.network.side_lanes(lane):
                    break
            for v in [v for v in road.vehicles if v is not ego and abs(v.position[0] - ego.position[0]) < 60]:
                road.vehicles.remove(v)  # room around the ego car: the right lane is free, safe to move into
            ego.speed_index = len(ego.target_speeds) - 1
            ahead = type(ego)(road, ego.position + np.array([7.0, 0.0]), heading=ego.heading, speed=ego.speed - 5.0)
            road.vehicles.append(ahead)
            answers[brake_room] = env.action_space.names[int(env.expert_action())]
        finally:
            env.close()
    assert answers == {0.0: "lane_right", 8.0: "slower"}, answers
    with pytest.raises(ValueError, match="brake_room is metres"):
        make_env("highway", brake_room=-1)
    with pytest.raises(ValueError, match="brake_room is an option of the meta-actions"):
        make_env("highway", actions="continuous", brake_room=5)


def test_the_wide_view_shows_far_ahead_and_the_lane_state_reads_the_road():
    """image_width / centering widen the frame along the road; `state: lanes` gives per lane the gap to the nearest car
    ahead and behind (capped at the frame's edges) and how fast it closes, as highway-env's road has them."""
    from omniplug.envs.highway import LANE_STATE, SPEED_SCALE

    env = make_env("highway", mission="cruise", duration=5, image_size=40, image_width=160, view_metres=120,
                   centering=0.2, state="lanes")
    try:
        assert (env.view_ahead, env.view_behind) == pytest.approx((96.0, 24.0))
        for seed in (3, 4):
            obs = env.reset(seed)
            assert obs.image.shape == (40, 160, 3) and obs.state.shape == (len(LANE_STATE),)
            state = dict(zip(LANE_STATE, obs.state))
            ego, road = env.ego, env.road
            front, rear = road.neighbour_vehicles(ego, ego.lane_index)
            gap = min(front.position[0] - ego.position[0], 96.0) if front is not None else 96.0
            assert state["own_exists"] == 1.0 and state["own_gap_ahead"] == pytest.approx(gap, abs=1e-3)
            if front is not None and gap < 96.0:
                assert state["own_closing_ahead"] == pytest.approx(ego.speed - front.speed, abs=1e-3)
            assert 0.0 <= state["own_gap_behind"] <= 24.0 and state["speed"] * SPEED_SCALE == pytest.approx(ego.speed)
            lane = ego.lane_index[2]  # 3 lanes: a side lane that is not there reads as gaps 0
            assert state["left_exists"] == float(lane > 0) and state["right_exists"] == float(lane < 2)
            if lane == 0:
                assert state["left_gap_ahead"] == 0.0
            obs = env.step(1).observation
            assert obs.state.shape == (len(LANE_STATE),)
    finally:
        env.close()
    with pytest.raises(ValueError, match="centering is where the ego car sits"):
        make_env("highway", centering=1.5)
    with pytest.raises(ValueError, match="key 'state' must be"):
        make_env("highway", state="pixels")
    with pytest.raises(ValueError, match="image_width is pixels"):
        make_env("highway", image_width=4)


def test_wide_frames_stack_one_above_the_other_in_a_rollout_gif(tmp_path):
    from omniplug.envs.rollout import write_gif

    wide = [[np.zeros((40, 160, 3), np.uint8)] * 3, [np.zeros((40, 160, 3), np.uint8)] * 2]
    square = [[np.zeros((64, 64, 3), np.uint8)] * 3] * 2
    assert Image.open(write_gif(wide, tmp_path / "w.gif", scale=1)).size == (160, 84)
    assert Image.open(write_gif(square, tmp_path / "s.gif", scale=1)).size == (132, 64)


def test_rollout_gifs_box_the_ego_car_and_the_policy_never_sees_the_box(tmp_path):
    from omniplug.envs.rollout import ConstantPolicy, evaluate

    env = make_env("highway", mission="cruise", duration=3, image_size=40, image_width=160, view_metres=120,
                   centering=0.2)
    try:
        obs = env.reset(3)
        shown = env.show(obs.image)
        green = (shown[..., 1] == 220) & (shown[..., 0] == 40)
        ys, xs = np.nonzero(green)
        assert green.any() and not ((obs.image[..., 1] == 220) & (obs.image[..., 0] == 40)).any()
        assert abs(xs.mean() - 0.2 * 160) < 2 and abs(ys.mean() - 20) < 2  # around the ego car
        policy = ConstantPolicy("idle", env.action_space)
    finally:
        env.close()
    report = evaluate(policy, "highway", episodes=1, seed=3, gif=tmp_path / "r.gif", gif_scale=1,
                      env_options={"mission": "cruise", "duration": 3, "image_size": 40, "image_width": 160,
                                   "view_metres": 120, "centering": 0.2})
    first = np.asarray(Image.open(report.gif).convert("RGB"))
    assert ((first[..., 1] > 200) & (first[..., 0] < 80) & (first[..., 2] < 80)).any()


def _bench_module(path: str, name: str):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_driving_bench_rolls_an_agent_out_in_its_own_view_and_measures_its_reader(tmp_path):
    """bench/actions/driving.py gives an agent the env options of its config (the shipped agent's wide view) with
    the mission on top; reader_shift.py measures a `state: lanes` reader on the gap ahead, per gap."""
    from pathlib import Path

    from omniplug.encoders.state import StateReader
    from omniplug.envs.collect import collect_demos

    root = Path(__file__).resolve().parents[1]
    driving = _bench_module("bench/actions/driving.py", "driving_bench")
    options = driving._agent_options(str(root / "configs/driving/highway.yaml"), [], {"mission": "cruise"})
    assert options["mission"] == "cruise" and options["image_width"] == 160 and options["state"] == "lanes"
    shift = _bench_module("bench/actions/reader_shift.py", "reader_shift_bench")
    wide = {k: options[k] for k in ("image_size", "image_width", "view_metres", "centering", "state")}
    collect_demos("highway", episodes=1, out=tmp_path / "d", seed=3, env_options={**wide, "duration": 4})
    reader = StateReader.load(root / "configs/driving/reader").eval()
    assert shift.how_to_measure(reader) is shift.measure_lanes
    row = shift.measure_lanes(reader, str(tmp_path / "d"), 1, dt=1.0)
    assert row["frames"] == 5 and set(row["by_gap"]) == {"0-10 m", "10-25 m", "25-50 m", "50-96 m"}

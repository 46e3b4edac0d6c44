"""Rollouts on the server (``omniplug serve --env ENV``): the UI's Rollout tab and ``POST /v1/rollout`` play a
typed mission with the served agent (the tiny act model on BabyAI GoToLocal, episodes cut at 3 steps) and answer
with the episodes' figures and a GIF; bad missions and values get clear 4xx errors."""

from __future__ import annotations

import base64
import io

import httpx
import pytest
from PIL import Image

from omniplug.serve.app import create_app
from omniplug.serve.rollouts import check_env, example_missions
from omniplug.serve.service import Service
from omniplug.serve.settings import ServeSettings

from tests.test_serve import ServerThread, chromium_page

pytest.importorskip("minigrid")

SETTINGS = ServeSettings(examples="none", env="babyai-gotolocal", env_option=("max_steps=3",), max_rollout_episodes=2,
                         concurrency=1, queue_size=1)


@pytest.fixture(scope="module")
def server(tiny_dir):
    service = Service(config=str(tiny_dir / "act.yaml"), settings=SETTINGS)
    with ServerThread(create_app(service, SETTINGS)) as srv:
        service.start()
        assert service.wait(120).state == "ready", service.readiness.message
        srv.service = service
        yield srv


def _frames(gif: bytes) -> tuple[int, tuple[int, int]]:
    image = Image.open(io.BytesIO(gif))
    assert image.format == "GIF"
    return image.n_frames, image.size


def test_api_rollout_plays_the_typed_mission(server):
    mission = example_missions(SETTINGS)[0]
    r = httpx.post(server.url + "/v1/rollout", json={"mission": mission.upper(), "episodes": 2, "seed": 100_000},
                   timeout=120)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["env"] == "babyai-gotolocal" and body["mission"] == mission.upper()
    assert len(body["seeds"]) == 2 and all(s >= 100_000 for s in body["seeds"])
    assert body["summary"]["episodes"] == 2 and len(body["episodes"]) == 2
    assert all(1 <= e["length"] <= 3 for e in body["episodes"])  # the server's env option reached the episodes
    frames, (width, height) = _frames(base64.b64decode(body["gif"]))
    assert frames >= 2 and width > height  # two episodes side by side, played over several frames
    # the same request plays the same episodes
    again = httpx.post(server.url + "/v1/rollout", json={"mission": mission, "episodes": 2, "seed": 100_000},
                       timeout=120).json()
    assert again["seeds"] == body["seeds"] and again["episodes"] == body["episodes"]


@pytest.mark.parametrize("payload, status, code", [
    ({"mission": "fly to the moon"}, 400, "unknown_mission"),
    ({"mission": "   "}, 400, "empty_mission"),
    ({"mission": "x" * 3000}, 400, "mission_too_long"),
    ({"mission": "go to the red ball", "episodes": 3}, 400, "invalid_episodes"),
    ({"mission": "go to the red ball", "episodes": 0}, 400, "invalid_episodes"),
    ({"mission": "go to the red ball", "seed": -1}, 400, "invalid_seed"),
    ({"mission": "go to the red ball", "policy": "expert"}, 400, "invalid_request"),  # unknown key
    ({"episodes": 1}, 400, "invalid_request"),  # no mission
])
def test_api_rollout_bad_requests(server, payload, status, code):
    r = httpx.post(server.url + "/v1/rollout", json=payload, timeout=120)
    assert (r.status_code, r.json()["error"]["code"]) == (status, code), r.text
    if code == "unknown_mission":  # the message says which missions there are
        assert "go to the" in r.json()["error"]["message"]


def test_ui_rollout_tab_shows_the_gif_and_says_errors(server):
    from gradio_client import Client

    client = Client(server.url + "/", verbose=False)
    gif, figures, status = client.predict(example_missions(SETTINGS)[0], 1, 100_000, api_name="/rollout")
    assert gif.endswith(".gif") and _frames(open(gif, "rb").read())[0] >= 2  # served as the animated GIF
    assert figures["summary"]["episodes"] == 1 and status.startswith("1 episode(s) of")
    gif, figures, status = client.predict("fly to the moon", 1, 100_000, api_name="/rollout")
    assert gif is None and "unknown_mission" in status and "go to the" in status
    gif, figures, status = client.predict(example_missions(SETTINGS)[0], 1, None, api_name="/rollout")
    assert gif is None and "invalid_seed" in status  # an emptied seed box: a message, not a traceback


def test_server_without_env_says_how_to_get_rollouts(tiny_dir):
    settings = ServeSettings(examples="none")
    service = Service(config=str(tiny_dir / "act.yaml"), settings=settings)
    with ServerThread(create_app(service, settings)) as srv:
        r = httpx.post(srv.url + "/v1/rollout", json={"mission": "go to the red ball"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "no_environment"
    assert "--env" in r.json()["error"]["message"]


def test_a_model_without_an_action_decoder_cannot_serve_an_env(tiny_dir):
    service = Service(config=str(tiny_dir / "seg.yaml"), settings=ServeSettings(examples="none", env="babyai-gotolocal"))
    readiness = service.start().wait(120)
    assert readiness.state == "failed" and "action decoder" in readiness.message and "leave --env out" in readiness.message


def test_bad_env_settings_fail_before_the_server_starts():
    with pytest.raises(ValueError, match="give env too"):
        ServeSettings(env_option=("max_steps=3",))
    with pytest.raises(ValueError, match="key=value"):
        ServeSettings(env="babyai-gotolocal", env_option=("max_steps",))
    with pytest.raises(ValueError, match="max_rollout_episodes"):
        ServeSettings(env="babyai-gotolocal", max_rollout_episodes=0)
    with pytest.raises(ValueError, match="babyai-gotolocal"):  # an unknown environment lists the known ones
        check_env(ServeSettings(env="babyai-gotolokal"))


def test_serve_cli_refuses_an_unknown_env_before_binding(tiny_dir, capsys):
    from omniplug.cli import main

    assert main(["serve", "-c", str(tiny_dir / "act.yaml"), "--env", "nowhere", "--port", "0"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_serve_env_alone_is_the_configs_own_with_the_command_lines_options_on_top(tiny_dir, capsys):
    from omniplug.cli import build_parser, main
    from omniplug.commands.serve import _settings

    act = str(tiny_dir / "act.yaml")
    recorded = "env={name: babyai-gotolocal, options: {view: agent, max_steps: 3}}"
    settings = _settings(build_parser().parse_args(["serve", "-c", act, recorded, "--env", "--env-option",
                                                    "max_steps=2"]))
    assert settings.env == "babyai-gotolocal" and settings.env_options == {"view": "agent", "max_steps": 2}
    assert main(["serve", "-c", act, "--env", "--port", "0"]) == 2  # nothing recorded, nothing named
    assert "records no environment" in capsys.readouterr().err
    assert main(["serve", "-c", act, recorded, "--env", "highway", "--port", "0"]) == 2  # not the agent's
    assert "an agent for 'babyai-gotolocal'" in capsys.readouterr().err


def test_browser_rollout_tab_plays_a_mission(server):
    with chromium_page() as page:
        page.goto(server.url + "/")
        page.get_by_role("tab", name="Rollout").click()
        page.locator("#roll").click()
        page.wait_for_selector("#rollout-gif img", timeout=90_000)
        assert page.locator("#rollout-gif img").get_attribute("src").endswith(".gif")
        page.wait_for_function("document.querySelector('#rollout-status').innerText.includes('episode(s) of')",
                               timeout=30_000)

"""Safe defaults of ``omniplug serve`` without a model: loopback unless auth is set, auth on the UI
and the API, readiness while loading or broken, the admission controller on its own."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
from PIL import Image

from omniplug.serve.admission import Admission
from omniplug.serve.errors import RequestError
from omniplug.serve.settings import AUTH_ENV, ServeSettings, check_bind, is_loopback


def test_non_loopback_bind_without_auth_refuses_to_start(tmp_path, capsys, monkeypatch):
    from omniplug.cli import main

    monkeypatch.delenv(AUTH_ENV, raising=False)
    config = tmp_path / "never_read.yaml"
    for host in ("0.0.0.0", "::", "192.0.2.10", "example.org"):
        assert main(["serve", "-c", str(config), "--host", host, "--port", "0"]) == 2
        err = capsys.readouterr().err
        assert f"refusing to listen on {host}" in err and "--auth" in err
    assert main(["demo", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen" in capsys.readouterr().err
    assert main(["serve", "-c", str(config), "--host", "0.0.0.0", "--auth", "no-colon"]) == 2
    assert "user:password" in capsys.readouterr().err


def test_bind_check_and_loopback_names(monkeypatch):
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.1", "192.168.1.2", "example.org", ""))
    check_bind(ServeSettings())  # the default is loopback
    with pytest.raises(ValueError, match="refusing to listen on 0.0.0.0"):
        check_bind(ServeSettings(host="0.0.0.0"))
    check_bind(ServeSettings(host="0.0.0.0", auth="alice:s3cret"))
    from omniplug.serve.settings import auth_from_env

    monkeypatch.setenv(AUTH_ENV, "bob:hunter2")
    assert auth_from_env(None) == "bob:hunter2" and auth_from_env("alice:x") == "alice:x"
    with pytest.raises(ValueError, match="user:password"):
        ServeSettings(auth=":nopass")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def guarded_client():
    """The real app with auth set, around a service whose model is never loaded (it stays 'loading')."""
    from fastapi.testclient import TestClient

    from omniplug.serve.app import create_app
    from omniplug.serve.service import Service

    settings = ServeSettings(auth="alice:s3cret", examples="none")
    service = Service(config="never-loaded.yaml", settings=settings)
    with TestClient(create_app(service, settings)) as client:
        yield client


def _basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_auth_is_enforced_on_ui_and_api(guarded_client):
    c = guarded_client
    assert c.get("/health").status_code == 200  # probes stay open
    ready = c.get("/ready")
    assert ready.status_code == 503 and ready.json()["error"]["code"] == "loading"
    form = {"files": [("image", ("x.png", _png(), "image/png"))], "data": {"prompt": "Segment it."}}
    for headers in ({}, _basic("alice", "wrong"), _basic("mallory", "s3cret"), {"Authorization": "Basic !!!"},
                    {"Authorization": "Bearer s3cret"}):
        r = c.post("/v1/infer", headers=headers, **form)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"].startswith("Basic")
    for path in ("/", "/openapi.json", "/docs", "/gradio_api/info", "/config"):
        assert c.get(path).status_code == 401, path
    good = _basic("alice", "s3cret")
    assert c.get("/", headers=good).status_code == 200
    assert c.get("/openapi.json", headers=good).status_code == 200
    r = c.post("/v1/infer", headers=good, **form)  # through auth, the upload checks and into the service
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    r = c.post("/v1/infer", headers=good, files=[("image", ("x.png", b"nope", "image/png"))], data={"prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"


def test_a_model_that_fails_to_load_is_reported_not_ready(tmp_path):
    from omniplug.serve.service import Service
    from omniplug.serve.uploads import InferOptions

    service = Service(config=str(tmp_path / "missing.yaml"), settings=ServeSettings()).start()
    readiness = service.wait(60)
    assert readiness.state == "failed" and "missing.yaml" in readiness.message
    with pytest.raises(RequestError) as info:
        service.answer([], "hello", InferOptions())
    assert info.value.status == 503 and info.value.code == "model_failed"


def test_admission_runs_n_queues_m_and_refuses_the_rest():
    admission = Admission(concurrency=2, queue_size=1)
    release = threading.Event()
    admission.before_run = lambda: release.wait(10)
    done: list[float] = []

    def work():
        with admission.slot() as waited:
            done.append(waited)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while (admission.stats.running, admission.stats.waiting) != (2, 1):
        assert time.monotonic() < deadline, admission.stats
        time.sleep(0.01)
    with pytest.raises(RequestError) as info:
        with admission.slot():
            pass
    assert info.value.status == 429 and info.value.code == "queue_full"
    release.set()
    for t in threads:
        t.join(10)
    assert len(done) == 3 and admission.stats.refused == 1
    assert (admission.stats.running, admission.stats.waiting) == (0, 0)
    with admission.slot() as waited:  # free again
        assert waited < 1.0
    with pytest.raises(ValueError, match="concurrency"):
        Admission(concurrency=0)


def test_gradio_client_through_auth():
    """The UI's own API behind Basic auth: refused without credentials, answered with them."""
    from gradio_client import Client

    from omniplug.serve.app import create_app
    from omniplug.serve.service import Service
    from tests.test_serve import ServerThread

    settings = ServeSettings(auth="alice:s3cret", examples="none")
    service = Service(config="never-loaded.yaml", settings=settings)
    with ServerThread(create_app(service, settings)) as srv:
        with pytest.raises(Exception):
            Client(srv.url + "/", verbose=False)
        client = Client(srv.url + "/", verbose=False, headers=_basic("alice", "s3cret"))
        status = client.predict({"text": "Segment it.", "files": []}, 8, False, 1.0, 1.0, api_name="/chat")[-1]
        assert "not_ready" in status  # through auth and into the one handler (the model is not loaded)

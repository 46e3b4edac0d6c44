"""The web UI and HTTP API (``omniplug.serve``) against a real server on a free loopback port.

The model is the tiny seg model of ``omniplug tiny`` with weights set so that greedy decoding
answers every prompt with "It is <seg>." (the LLM's layers add nothing to the residual stream, so
the next token depends on the last one only; embeddings and head rows chain the answer): every
path — Python, ``omniplug infer``, ``POST /v1/infer``, the UI through gradio_client and a browser
— really runs the LLM, the seg projector and SAM and must give the same text and masks.
"""

from __future__ import annotations

import base64
import io
import json
import os
import struct
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.serve.admission import Admission
from omniplug.serve.app import bound_socket, create_app
from omniplug.serve.service import Service
from omniplug.serve.settings import ServeSettings

PROMPT = "Please segment the red circle."
SETTINGS = ServeSettings(max_upload_mb=1.0, max_pixels=1_000_000, max_images=3, max_prompt_chars=500,
                         max_new_tokens=32, default_new_tokens=16, concurrency=1, queue_size=2, examples="none")
CHROMIUM = "/usr/bin/chromium"


# --- the model: tiny seg model whose greedy answer is "It is <seg>." ---------------------------------
def _set_rows(layer, rows: dict[int, torch.Tensor]) -> None:
    """Rows of a peft TrainableTokens-wrapped embedding / head: the base row and, for the new tokens, the delta."""
    indices = list(layer.token_indices["default"])
    for i, value in rows.items():
        layer.base_layer.weight[i] = value
        if i in indices:
            layer.trainable_tokens_delta["default"][indices.index(i)] = value


def write_rigged_weights(tiny_dir: Path, out_dir: Path) -> list[str]:
    """Weights for ``seg.yaml`` (+ the returned overrides) that answer "It is <seg>." to any prompt."""
    from safetensors.torch import save_file

    from omniplug.build import build_model
    from omniplug.weights import WEIGHTS_NAME

    overrides = ["one_model.conv_type=plain"]
    torch.manual_seed(0)
    model = build_model(tiny_dir / "seg.yaml", overrides)
    tok = model.tokenizer
    newline = tok.encode("\n", special=False)
    assert len(newline) == 1, "the plain template's prompt ends with one newline token"
    chain = [newline[0], *tok.encode("It is", special=False), tok.token_id("<seg>"), *tok.encode(".", special=False)]
    assert len(set(chain)) == len(chain) and tok.eos_id not in chain
    llm = model.llm.model
    embed, head = llm.get_input_embeddings().token_adapter, llm.get_output_embeddings().token_adapter
    dim = embed.base_layer.weight.shape[1]
    basis = torch.eye(dim)
    with torch.no_grad():
        for name, module in llm.named_modules():
            if name.endswith(("o_proj", "down_proj")):
                getattr(module, "base_layer", module).weight.zero_()
        head.base_layer.weight.zero_()
        head.trainable_tokens_delta["default"].zero_()
        _set_rows(embed, {t: basis[k] for k, t in enumerate(chain)})
        _set_rows(head, {nxt: 10 * basis[k] for k, nxt in enumerate(chain[1:] + [tok.eos_id])})
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in model.named_parameters()}, str(out_dir / WEIGHTS_NAME))
    return overrides + [f"one_model.weights={out_dir}"]


# --- a server in a thread -------------------------------------------------------------------------
class ServerThread:
    def __init__(self, app) -> None:
        import uvicorn

        self.sock = bound_socket("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def model_args(tiny_dir, tmp_path_factory):
    overrides = write_rigged_weights(tiny_dir, tmp_path_factory.mktemp("rigged"))
    return str(tiny_dir / "seg.yaml"), overrides


@pytest.fixture(scope="module")
def server(model_args):
    config, overrides = model_args
    service = Service(config=config, overrides=overrides, settings=SETTINGS,
                      admission=Admission(concurrency=SETTINGS.concurrency, queue_size=SETTINGS.queue_size))
    with ServerThread(create_app(service, SETTINGS)) as srv:
        assert httpx.get(srv.url + "/health").json() == {"status": "alive"}  # at once, while the model loads
        service.start()
        assert service.wait(120).state == "ready", service.readiness.message
        srv.service = service
        yield srv


@pytest.fixture(scope="module")
def image_path(tiny_dir) -> Path:
    return tiny_dir / "seg_data" / "shapes_refcoco" / "images" / "val_0024.png"


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", **kw)
    return buf.getvalue()


def _b64_mask(png: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(png)))) > 0


def _infer(url: str, files=None, data=None, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/infer", files=files, data=data, timeout=60, **kw)


# --- one answer, four ways ----------------------------------------------------------------------------
def test_python_cli_api_and_ui_give_the_same_answer(server, model_args, image_path, tmp_path, capsys):
    from gradio_client import Client, handle_file

    from omniplug.cli import main
    from omniplug.infer.pipeline import Pipeline

    config, overrides = model_args
    py = Pipeline.from_config(config, overrides)(Image.open(image_path), PROMPT, max_new_tokens=16)
    assert py.text == "It is [mask 1]." and len(py.masks) == 1
    expected = py.masks[0].mask
    assert 0 < expected.sum() < expected.size and expected.shape == (48, 64)  # a real, non-trivial mask

    assert main(["infer", "-c", config, *overrides, "--image", str(image_path), "--prompt", PROMPT,
                 "--max-new-tokens", "16", "--out", str(tmp_path / "cli"), "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert cli["text"] == py.text
    assert np.array_equal(np.asarray(Image.open(cli["masks"][0]["path"])) > 0, expected)

    api = _infer(server.url, files=[("image", ("scene.png", image_path.read_bytes(), "image/png"))],
                 data={"prompt": PROMPT, "max_new_tokens": "16"})
    assert api.status_code == 200, api.text
    body = api.json()
    assert body["text"] == py.text and len(body["masks"]) == 1
    assert np.array_equal(_b64_mask(body["masks"][0]["png"]), expected)
    assert body["masks"][0]["area"] == int(expected.sum())
    assert {"queue", "preprocess", "generate", "postprocess", "total"} <= set(body["timings"])

    client = Client(server.url + "/", verbose=False)
    message = {"text": PROMPT, "files": [handle_file(str(image_path))]}
    box, chat, shown, generated, downloads, timings, status = client.predict(
        message, 16, False, 1.0, 1.0, api_name="/chat")
    assert status.startswith("Answered"), status
    assert chat[-1]["role"] == "assistant" and py.text in json.dumps(chat[-1]["content"])
    names = {Path(p).name: p for p in downloads}
    assert {"mask_1.png", "overlay.png", "response.json"} <= set(names)
    assert np.array_equal(np.asarray(Image.open(names["mask_1.png"])) > 0, expected)
    ui_json = json.loads(Path(names["response.json"]).read_text())
    assert ui_json["text"] == py.text and ui_json["masks"][0]["png"] == body["masks"][0]["png"]
    assert Image.open(shown).size[0] >= 64 and "generate" in timings


def test_gradio_client_round_trip_and_errors(server, image_path, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(server.url + "/", verbose=False)
    first = client.predict({"text": PROMPT, "files": [handle_file(str(image_path))]}, 8, False, 1.0, 1.0,
                           api_name="/chat")
    assert first[-1].startswith("Answered")
    assert first[1][-1]["role"] == "assistant"
    # a bad upload is shown in the status line, not raised
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not a picture")
    bad = client.predict({"text": PROMPT, "files": [handle_file(str(junk))]}, 8, False, 1.0, 1.0, api_name="/chat")
    assert "invalid_image" in bad[-1]
    # a server path named in a raw request (gradio_client would upload a local file itself), even an
    # image's, is refused by Gradio's upload check, which a mounted app has to turn on (create_app does)
    for path in (str(image_path), "/etc/passwd"):
        message = {"text": PROMPT, "files": [{"path": path, "meta": {"_type": "gradio.FileData"}}]}
        event = httpx.post(server.url + "/gradio_api/call/chat", json={"data": [message, 8, False, 1.0, 1.0]})
        stream = httpx.get(server.url + f"/gradio_api/call/chat/{event.json()['event_id']}", timeout=30).text
        assert "event: error" in stream and "not uploaded by a user" in stream, stream


def test_health_ready_and_openapi(server):
    assert httpx.get(server.url + "/health").status_code == 200
    ready = httpx.get(server.url + "/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    schema = httpx.get(server.url + "/openapi.json").json()
    post = schema["paths"]["/v1/infer"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"image", "prompt", "max_new_tokens", "do_sample", "temperature", "top_p"} <= set(form["properties"])
    assert {"400", "413", "415", "422", "429"} <= set(post["responses"])
    assert "InferResponse" in schema["components"]["schemas"]


# --- bad input: every case is 4xx with a clear message (or 200 where it is valid), never 5xx ----------------
def _png_with_size(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height but carries one row of data (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")


def _multipart(**fields: str | bytes | tuple[str, bytes]) -> dict:
    """Request kwargs for a multipart body written by hand (text, raw bytes, or (filename, bytes) file parts)."""
    boundary = b"omniplugtest"
    body = b""
    for name, value in fields.items():
        if isinstance(value, tuple):
            head = f'name="{name}"; filename="{value[0]}"\r\nContent-Type: application/octet-stream'
            value = value[1]
        else:
            head = f'name="{name}"'
        data = value.encode() if isinstance(value, str) else value
        body += b"--" + boundary + f"\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode() + data + b"\r\n"
    return {"content": body + b"--" + boundary + b"--\r\n",
            "headers": {"content-type": f"multipart/form-data; boundary={boundary.decode()}"}}


def _corpus(image_bytes: bytes) -> list[tuple[str, dict, int, str | None]]:
    """(case, request kwargs, expected status, expected error code)."""
    rgb = Image.open(io.BytesIO(image_bytes)).convert("RGB")

    def enc(image: Image.Image, fmt: str, **kw) -> bytes:
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kw)
        return buf.getvalue()

    jpeg = enc(rgb, "JPEG", quality=90)
    gif_frames = io.BytesIO()
    rgb.save(gif_frames, format="GIF", save_all=True, append_images=[rgb.rotate(90)], duration=100, loop=0)
    long_clip = io.BytesIO()  # frames differ, or GIF would merge them
    first, *rest = [Image.new("RGB", (8, 8), (3 * i, 0, 0)) for i in range(SETTINGS.max_clip_frames + 1)]
    first.save(long_clip, format="GIF", save_all=True, append_images=rest, duration=40, loop=0)
    sixteen = Image.fromarray((np.arange(48 * 64, dtype=np.uint16).reshape(48, 64) * 20))
    big_gif = bytearray(enc(Image.new("P", (4, 4)), "GIF"))
    big_gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen size
    big_gif_frame = big_gif.find(b"\x2c")
    big_gif[big_gif_frame + 5: big_gif_frame + 9] = struct.pack("<HH", 65535, 65535)  # image descriptor size

    def one(data: bytes, name: str = "x.png", ctype: str = "image/png", **form) -> dict:
        return {"files": [("image", (name, data, ctype))], "data": {"prompt": PROMPT, **form}}

    ok = one(image_bytes)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>'
    html = b"<!doctype html><html><body><img src=x onerror=alert(1)></body></html>"
    return [
        ("zero_bytes", one(b""), 400, "invalid_image"),
        ("truncated_png", one(image_bytes[: len(image_bytes) // 2]), 400, "invalid_image"),
        ("truncated_jpeg", one(jpeg[: len(jpeg) // 2], "x.jpg", "image/jpeg"), 400, "invalid_image"),
        ("png_signature_only", one(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20), 400, "invalid_image"),
        ("bomb_png_huge_header", one(_png_with_size(100_000, 100_000)), 413, "image_too_large"),
        ("png_above_pixel_limit", one(_png_with_size(2000, 2000)), 413, "image_too_large"),
        ("bomb_gif_huge_header", one(bytes(big_gif), "x.gif", "image/gif"), 413, "image_too_large"),
        ("cmyk_jpeg_is_converted", one(enc(rgb.convert("CMYK"), "JPEG"), "x.jpg", "image/jpeg"), 200, None),
        ("png_16_bit_is_scaled", one(enc(sixteen, "PNG")), 200, None),
        ("png_rgba", one(enc(rgb.convert("RGBA"), "PNG")), 200, None),
        ("png_palette", one(enc(rgb.convert("P"), "PNG")), 200, None),
        ("jpeg_greyscale", one(enc(rgb.convert("L"), "JPEG"), "x.jpg", "image/jpeg"), 200, None),
        ("gif_single_frame", one(enc(rgb, "GIF"), "x.gif", "image/gif"), 200, None),
        ("gif_animated_is_a_clip", one(gif_frames.getvalue(), "x.gif", "image/gif"), 200, None),
        ("gif_clip_too_long", one(long_clip.getvalue(), "x.gif", "image/gif"), 413, "clip_too_long"),
        ("clip_frames_count_as_images", {"files": [("image", ("a.gif", gif_frames.getvalue(), "image/gif")),
                                                   ("image", ("b.png", image_bytes, "image/png")),
                                                   ("image", ("c.png", image_bytes, "image/png"))],
                                         "data": {"prompt": PROMPT}}, 400, "too_many_images"),
        ("webp", one(enc(rgb, "WEBP", lossless=True), "x.webp", "image/webp"), 200, None),
        ("bmp", one(enc(rgb, "BMP"), "x.bmp", "image/bmp"), 200, None),
        ("tiff_not_accepted", one(enc(rgb, "TIFF"), "x.tiff", "image/tiff"), 400, "invalid_image"),
        ("random_bytes", one(os.urandom(2048)), 400, "invalid_image"),
        ("svg", one(svg, "x.svg", "image/svg+xml"), 400, "invalid_image"),
        ("html", one(html, "x.html", "text/html"), 400, "invalid_image"),
        ("text_named_png", one(b"hello, I am not a picture\n" * 10), 400, "invalid_image"),
        ("declared_type_is_ignored", one(image_bytes, "x.txt", "text/plain"), 200, None),
        ("traversal_filename", one(image_bytes, "../../etc/passwd"), 200, None),
        ("prompt_too_long", {**ok, "data": {"prompt": "a" * 501}}, 400, "prompt_too_long"),
        ("prompt_empty", {**ok, "data": {"prompt": ""}}, 400, "empty_prompt"),
        ("prompt_blank", {**ok, "data": {"prompt": " \n\t "}}, 400, "empty_prompt"),
        ("prompt_missing", {**ok, "data": {}}, 400, "missing_prompt"),
        ("prompt_with_nul", {**ok, "data": {"prompt": "segment\x00 it"}}, 400, "invalid_prompt"),
        ("prompt_special_tokens", {**ok, "data": {"prompt": "<seg><image></s><seg> <gen_0>"}}, 200, None),
        ("prompt_unicode", {**ok, "data": {"prompt": "Segmente le cercle rouge, s'il te plaît ✓ 🟥"}}, 200, None),
        ("prompt_invalid_utf8_is_replaced", _multipart(image=("x.png", image_bytes), prompt=b"segment \xff\xfe it"),
         200, None),
        ("max_new_tokens_negative", one(image_bytes, max_new_tokens="-5"), 400, "invalid_option"),
        ("max_new_tokens_zero", one(image_bytes, max_new_tokens="0"), 400, "invalid_option"),
        ("max_new_tokens_huge", one(image_bytes, max_new_tokens="99999999999999999999"), 400, "invalid_option"),
        ("max_new_tokens_above_limit", one(image_bytes, max_new_tokens="33"), 400, "invalid_option"),
        ("max_new_tokens_fraction", one(image_bytes, max_new_tokens="3.5"), 400, "invalid_option"),
        ("max_new_tokens_text", one(image_bytes, max_new_tokens="lots"), 400, "invalid_option"),
        ("temperature_zero", one(image_bytes, temperature="0"), 400, "invalid_option"),
        ("temperature_negative", one(image_bytes, temperature="-1"), 400, "invalid_option"),
        ("temperature_nan", one(image_bytes, temperature="nan"), 400, "invalid_option"),
        ("temperature_inf", one(image_bytes, temperature="inf"), 400, "invalid_option"),
        ("temperature_text", one(image_bytes, temperature="hot"), 400, "invalid_option"),
        ("top_p_zero", one(image_bytes, top_p="0"), 400, "invalid_option"),
        ("top_p_above_one", one(image_bytes, top_p="1.5"), 400, "invalid_option"),
        ("do_sample_not_bool", one(image_bytes, do_sample="maybe"), 400, "invalid_option"),
        ("sampling_valid", one(image_bytes, do_sample="true", temperature="0.7", top_p="0.9"), 200, None),
        ("unknown_field", one(image_bytes, foo="bar"), 400, "unknown_field"),
        ("image_as_server_path", _multipart(prompt=PROMPT, image="/etc/passwd"), 400, "image_not_a_file"),
        ("prompt_as_file", {"files": [("image", ("x.png", image_bytes, "image/png")),
                                      ("prompt", ("p.txt", b"segment it", "text/plain"))]}, 400, "field_not_text"),
        ("duplicate_prompt", {"files": [("image", ("x.png", image_bytes, "image/png"))],
                              "data": {"prompt": [PROMPT, PROMPT]}}, 400, "duplicate_field"),
        ("no_image_but_mask_answer", _multipart(prompt=PROMPT), 422, "cannot_answer"),
        ("too_many_images", {"files": [("image", (f"{i}.png", image_bytes, "image/png")) for i in range(4)],
                             "data": {"prompt": PROMPT}}, 400, "too_many_images"),
        ("upload_too_large", one(image_bytes + b"\x00" * (1_100_000)), 413, "upload_too_large"),
        ("json_body", {"json": {"prompt": PROMPT, "image": "/etc/passwd"}}, 415, "unsupported_media_type"),
        ("urlencoded_body", {"data": {"prompt": PROMPT}, "files": None}, 415, "unsupported_media_type"),
        ("no_body", {}, 415, "unsupported_media_type"),
        ("multipart_without_boundary", {"content": b"--x\r\n\r\n", "headers": {"content-type": "multipart/form-data"}},
         400, "malformed_form"),
        ("multipart_garbage", {"content": os.urandom(512),
                               "headers": {"content-type": "multipart/form-data; boundary=abc"}}, 400, None),
    ]


def test_bad_input_corpus(server, image_path):
    image_bytes = image_path.read_bytes()
    corpus = _corpus(image_bytes)
    assert len(corpus) >= 30
    failures = []
    for case, kwargs, status, code in corpus:
        response = _infer(server.url, **kwargs)
        body = response.json()
        got_code = body.get("error", {}).get("code")
        message = body.get("error", {}).get("message", "")
        if response.status_code != status or (code is not None and got_code != code):
            failures.append(f"{case}: {response.status_code} {response.text[:200]}")
        elif status >= 400 and len(message) < 15:
            failures.append(f"{case}: unclear message {message!r}")
        elif status == 200 and not body["text"]:
            failures.append(f"{case}: empty answer")
    assert not failures, "\n".join(failures)
    # the server is still fine
    good = _infer(server.url, files=[("image", ("x.png", image_bytes, "image/png"))], data={"prompt": PROMPT})
    assert good.status_code == 200 and good.json()["text"] == "It is [mask 1]."


def test_chunked_upload_above_the_limit_is_refused(server, image_path):
    boundary = "b0undary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\n{PROMPT}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"x.png\"\r\n"
            "Content-Type: image/png\r\n\r\n").encode()

    def body():  # no Content-Length: sent chunked, counted by the server as it arrives
        yield head
        for _ in range(20):
            yield b"\x00" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    response = _infer(server.url, content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert response.status_code == 413 and response.json()["error"]["code"] == "upload_too_large"


def test_typed_special_tokens_stay_text(server):
    """A typed "<seg>" or "<image>" is encoded as plain characters, never as the special tokens."""
    model = server.service.pipeline.model
    typed = model.tokenizer.encode("<seg><image>", special=False)
    assert model.tokenizer.token_id("<seg>") not in typed
    assert model.tokenizer.token_id(model.image_token) not in typed


# --- overload: concurrency 1 + queue 2 accepted, the rest refused at once -------------------------------
def test_overload_gets_429_and_accepted_requests_complete(server, image_path):
    from gradio_client import Client, handle_file

    admission = server.service.admission
    release = threading.Event()
    admission.before_run = lambda: release.wait(30)
    files = [("image", ("x.png", image_path.read_bytes(), "image/png"))]
    accepted: list[httpx.Response] = []

    def send():
        accepted.append(_infer(server.url, files=files, data={"prompt": PROMPT}))

    threads = [threading.Thread(target=send) for _ in range(3)]
    try:
        for t in threads:  # one running (held) and two waiting
            t.start()
        deadline = time.monotonic() + 20
        while (admission.stats.running, admission.stats.waiting) != (1, 2):
            assert time.monotonic() < deadline, admission.stats
            time.sleep(0.02)
        refused = [_infer(server.url, files=files, data={"prompt": PROMPT}) for _ in range(3)]
        assert [r.status_code for r in refused] == [429] * 3
        assert all(r.json()["error"]["code"] == "queue_full" for r in refused)
        ui = Client(server.url + "/", verbose=False).predict(
            {"text": PROMPT, "files": [handle_file(str(image_path))]}, 8, False, 1.0, 1.0, api_name="/chat")
        assert "queue_full" in ui[-1]  # the UI shares the admission controller
    finally:
        release.set()
        for t in threads:
            t.join(60)
        admission.before_run = None
    assert [r.status_code for r in accepted] == [200] * 3
    assert admission.stats.running == 0 and admission.stats.waiting == 0


# --- a real browser ---------------------------------------------------------------------------------------
@contextmanager
def chromium_page(width: int = 1280, height: int = 900):
    """A page of headless Chromium (playwright); the calling test is skipped without Chromium or playwright."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def test_browser_upload_segment_and_see_the_overlay(server, image_path, tmp_path):
    with chromium_page() as page:
        page.goto(server.url + "/")
        page.locator("#prompt input[type=file]").set_input_files(str(image_path))
        page.locator("#prompt textarea").fill(PROMPT)
        page.locator("#prompt textarea").press("Enter")
        page.wait_for_selector("#overlay img", timeout=90_000)  # a loaded 2-core machine needs more than 30 s
        page.wait_for_function("document.querySelector('#status').innerText.includes('Answered')", timeout=30_000)
        assert "It is [mask 1]." in page.locator("#chat").inner_text()
        shot = tmp_path / "ui.png"
        page.screenshot(path=str(shot), full_page=True)
        assert Image.open(shot).size[0] >= 1000
        # a bad upload: the status line says what is wrong
        bad = tmp_path / "not_an_image.png"
        bad.write_bytes(b"not an image at all")
        page.locator("#prompt input[type=file]").set_input_files(str(bad))
        page.locator("#prompt textarea").fill(PROMPT)
        page.locator("#prompt textarea").press("Enter")
        page.wait_for_function("document.querySelector('#status').innerText.includes('invalid_image')",
                               timeout=30_000)


# --- continuous batching behind the server; several questions about one upload ----------------------------
def test_concurrent_requests_share_the_running_batch_and_many_prompts_one_upload(model_args, image_path):
    config, overrides = model_args
    settings = ServeSettings(max_upload_mb=1.0, max_new_tokens=32, default_new_tokens=16, concurrency=4,
                             queue_size=4, examples="none")
    service = Service(config=config, overrides=overrides, settings=settings)
    png = image_path.read_bytes()
    with ServerThread(create_app(service, settings)) as srv:
        service.start()
        assert service.wait(120).state == "ready", service.readiness.message
        assert service.worker is not None  # the tiny Llama has a cached step
        form = {"files": [("image", ("scene.png", png, "image/png"))], "data": {"prompt": PROMPT}}
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: _infer(srv.url, **form), range(6)))
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers]
        assert {a.json()["text"] for a in answers} == {"It is [mask 1]."}
        assert service.worker.batcher.peak_rows > 1  # they decoded together
        masks = [_b64_mask(a.json()["masks"][0]["png"]) for a in answers]
        assert all(np.array_equal(m, masks[0]) for m in masks)

        many = httpx.post(srv.url + "/v1/infer/many", timeout=60,
                          files=[("image", ("scene.png", png, "image/png"))],
                          data={"prompt": [PROMPT, "Segment it, please.", "Where is the circle?"]})
        assert many.status_code == 200, many.text
        got = many.json()["answers"]
        assert [g["text"] for g in got] == ["It is [mask 1]."] * 3
        assert all(np.array_equal(_b64_mask(g["masks"][0]["png"]), masks[0]) for g in got)
        too_many = httpx.post(srv.url + "/v1/infer/many", timeout=60, files=[("image", ("s.png", png, "image/png"))],
                              data={"prompt": ["a"] * 5})
        assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "too_many_prompts"
        none = httpx.post(srv.url + "/v1/infer/many", timeout=60, files=[("image", ("s.png", png, "image/png"))],
                          data={"max_new_tokens": "4"})
        assert none.status_code == 400 and none.json()["error"]["code"] == "missing_prompt"

        # a conversation's next turn (as the UI sends it) starts from the kept keys/values of the first
        from omniplug.data.conversation import Turn
        from omniplug.serve.uploads import InferOptions

        scene = Image.open(image_path).convert("RGB")
        first = service.answer([scene], "Describe the scene in many words.", InferOptions(max_new_tokens=8))
        hits = service.pipeline.prefix_cache.hits
        again = service.answer([scene], PROMPT, InferOptions(max_new_tokens=8),
                               history=[Turn("user", "Describe the scene in many words.", images=1),
                                        Turn("assistant", first.text)])
        assert service.pipeline.prefix_cache.hits == hits + 1 and again.text == "It is [mask 1]."
    service.close()

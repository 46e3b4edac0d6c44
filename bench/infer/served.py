"""What the UI screenshot scripts share: ``omniplug serve`` in a subprocess until it is ready, and headless
Chromium (``/usr/bin/chromium``, driven by playwright)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator

import httpx

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]


@contextmanager
def served(serve_args: list[str], port: int, *, timeout: float = 180) -> Iterator[str]:
    """``omniplug serve SERVE_ARGS --port PORT`` until ``/ready`` answers 200; yields the URL, stops the server."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "omniplug", "serve", *serve_args, "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(30)


@contextmanager
def browser_page(width: int = 1280, height: int = 900):
    """A page of a headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()

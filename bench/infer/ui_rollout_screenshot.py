"""The web UI's Rollout tab with the shipped driving agent, as a browser shows it: ``docs/images/ui_rollout.png``.

    python bench/infer/ui_rollout_screenshot.py          # ~1 min on 2 CPU cores; needs /usr/bin/chromium, highway-env

Serves ``configs/driving/highway.yaml`` (the shipped agent) with ``omniplug serve --env highway`` on 127.0.0.1, has
Chromium (playwright) open the Rollout tab, type a mission, roll out two episodes and screenshot the page once the
GIF is shown (a screenshot catches one frame of it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "ui_rollout.png"))
    ap.add_argument("--mission", default="overtake the car ahead")
    ap.add_argument("--port", type=int, default=7868)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "omniplug", "serve", "-c", str(REPO / "configs/driving/highway.yaml"),
                               "--env", "highway", "--port", str(args.port), "--examples", "none"], env=env)
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("the server did not become ready")
            time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1280, "height": 820})
            page.goto(url + "/")
            page.get_by_role("tab", name="Rollout").click()
            page.locator("#mission input").fill(args.mission)
            page.locator("#mission input").press("Enter")
            page.locator("#roll").click()
            page.wait_for_selector("#rollout-gif img", timeout=120_000)
            page.wait_for_function("document.querySelector('#rollout-status').innerText.includes('episode(s)')",
                                   timeout=30_000)
            time.sleep(3)  # a few frames into the GIF
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out, full_page=True)
            print(page.locator("#rollout-status").inner_text())
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

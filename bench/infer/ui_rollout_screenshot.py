"""The web UI's Rollout tab with the shipped driving agent, as a browser shows it: ``docs/images/ui_rollout.png``.

    python bench/infer/ui_rollout_screenshot.py          # ~1 min on 2 CPU cores; needs /usr/bin/chromium, highway-env

Serves ``configs/driving/highway.yaml`` (the shipped agent) with ``omniplug serve --env highway`` on 127.0.0.1, has
Chromium (playwright) open the Rollout tab, type a mission, roll out two episodes and screenshot the page once the
GIF is shown (a screenshot catches one frame of it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from served import browser_page, served

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "images" / "ui_rollout.png"))
    ap.add_argument("--mission", default="overtake the car ahead")
    ap.add_argument("--port", type=int, default=7868)
    args = ap.parse_args()
    serve_args = ["-c", str(REPO / "configs/driving/highway.yaml"), "--env", "highway", "--examples", "none"]
    with served(serve_args, args.port) as url, browser_page(height=820) as page:
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
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The web UI answering a detection request, as a browser shows it: ``docs/detection_ui.png``.

    python bench/infer/ui_boxes_screenshot.py            # ~2 min on 2 CPU cores; needs /usr/bin/chromium

Writes the tiny checkpoints (``omniplug tiny``), trains ``det.yaml`` a few hundred steps so that its LLM answers
"Sure, <det>." (the tiny DETR's boxes are those of a barely trained detector, drawn with label and score, not a
measure of anything), serves it on 127.0.0.1 with ``omniplug serve`` and has Chromium (playwright) upload a
shapes image, ask "Detect every circle." and screenshot the page once the boxes are drawn.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from served import browser_page, served

REPO = Path(__file__).resolve().parents[2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "docs" / "detection_ui.png"))
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--port", type=int, default=7869)
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    work = Path(tempfile.mkdtemp(prefix="omniplug-ui-"))
    omniplug = [sys.executable, "-m", "omniplug"]
    subprocess.run([*omniplug, "tiny", "--out", str(work)], check=True, env=env, stdout=subprocess.DEVNULL)
    config, run = str(work / "det.yaml"), work / "run"
    subprocess.run([*omniplug, "train", "-c", config, f"trainer.iters_per_epoch={args.steps}", f"trainer.output_dir={run}"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    image = work / "seg_data" / "shapes_refcoco" / "images" / "val_0025.png"
    serve_args = ["-c", config, f"one_model.weights={run}", "decoder.tiny_detr.score_threshold=0.0",
                  "decoder.tiny_detr.max_boxes=2", "--examples", "none"]
    with served(serve_args, args.port) as url, browser_page() as page:
        page.goto(url + "/")
        page.locator("#prompt input[type=file]").set_input_files(str(image))
        page.locator("#prompt textarea").fill("Detect every circle.")
        page.locator("#prompt textarea").press("Enter")
        try:
            page.wait_for_selector("#overlay img", timeout=120_000)
        except Exception:
            print("chat:", page.locator("#chat").inner_text(), "\nstatus:", page.locator("#status").inner_text())
            page.screenshot(path="/tmp/ui_fail.png", full_page=True)
            raise
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=args.out, full_page=True)
        print(page.locator("#chat").inner_text())
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

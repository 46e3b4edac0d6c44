"""A picture of what the default model does on held-out scenes, one row per scene:

    image | referring mask | semantic mask | part mask | panoptic (every region) | its caption | drawn from that caption

    python bench/default/showcase.py [--config configs/default/omni_tiny.yaml] [--data data/world/eval/val]
                                     [--rows 4] [--out bench/default/showcase.png] [overrides ...]

Every panel comes from ``Pipeline`` (the one inference path) with greedy answers; prompts are built from
the scene's own annotations (no cherry-picking: scenes 0..rows-1 of the split). The answer text is drawn
under each panel.
"""

from __future__ import annotations

import argparse
import json
import os
import textwrap
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image, ImageDraw  # noqa: E402

from omniplug.data.generation import draw_prompt  # noqa: E402
from omniplug.data.world_tasks import ensure_split  # noqa: E402
from omniplug.infer.pipeline import Pipeline  # noqa: E402
from omniplug.infer.render import overlay  # noqa: E402

CELL, TEXT_H = 160, 44


def _requests(scene: dict, image: Image.Image) -> list[tuple[str, str]]:
    """(column title, prompt) for one scene."""
    objects = scene["objects"]
    shapes = [o for o in objects if o["colour"]]
    target = shapes[0] if shapes else objects[0]
    name = f"{target['colour']} {target['category']}" if target["colour"] else target["category"]
    composite = next((o for o in objects if o["parts"]), None)
    part = (f"Please segment the {composite['parts'][0]['name']} of the {composite['category']}."
            if composite else "Please segment the sky.")
    return [("referring", f"Please segment the {name}."),
            ("semantic", f"What is {objects[-1]['category']} in this image? Please output segmentation mask."),
            ("part", part),
            ("panoptic", "List and segment all regions in the image."),
            ("caption", "What is in this picture?")]


def _panel(image: Image.Image, text: str) -> Image.Image:
    cell = Image.new("RGB", (CELL, CELL + TEXT_H), "white")
    cell.paste(image.convert("RGB").resize((CELL, CELL), Image.NEAREST), (0, 0))
    lines = textwrap.wrap(text, 30)[:3]
    ImageDraw.Draw(cell).multiline_text((3, CELL + 2), "\n".join(lines), fill="black", spacing=1)
    return cell


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/default/omni_tiny.yaml")
    ap.add_argument("--data", default="data/world/eval/val")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--out", default="bench/default/showcase.png")
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    root = ensure_split(root=args.data, split="val", n=200, seed=101)
    scenes = [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()[: args.rows]]
    pipe = Pipeline.from_config(args.config, args.overrides)
    titles = ["image"] + [t for t, _ in _requests(scenes[0], Image.new("RGB", (1, 1)))] + ["generated"]
    sheet = Image.new("RGB", (CELL * len(titles), 18 + args.rows * (CELL + TEXT_H)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(titles):
        draw.text((c * CELL + 4, 3), title, fill="black")
    for r, scene in enumerate(scenes):
        image = Image.open(root / scene["file_name"]).convert("RGB")
        panels = [_panel(image, scene["file_name"])]
        caption = ""
        for title, prompt in _requests(scene, image):
            resp = pipe(image, prompt)
            if title == "caption":
                caption = resp.text
                panels.append(_panel(image, resp.text))
            else:
                panels.append(_panel(overlay(image, resp.masks) if resp.masks else image, f"{prompt} -> {resp.text}"))
        gen = pipe(None, draw_prompt(caption or "a house on grass under the sky"))
        panels.append(_panel(gen.images[0] if gen.images else Image.new("RGB", (64, 64)), gen.text or "(no image)"))
        for c, panel in enumerate(panels):
            sheet.paste(panel, (c * CELL, 18 + r * (CELL + TEXT_H)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

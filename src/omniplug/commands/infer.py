"""``omniplug infer``: one answer, or a batch of requests from a JSONL file.

One request::

    omniplug infer -c CONFIG --image PATH --prompt TEXT [--out DIR] [--json]

A batch (``--batch FILE.jsonl --out DIR [--batch-size N]``): one JSON object per line, e.g.
``{"image": "scene.png", "prompt": "Please segment the red circle.", "options": {"max_new_tokens": 32}}``
(``image`` or ``images``: paths relative to the JSONL file's folder; ``history``; ``options``: see
``omniplug.infer.pipeline.Options``; ``id``: a name for the output folder). Every line is checked
before the model is built; a bad one is reported with its line number. Each request gets a folder
``DIR/<id or line_NNNNN>/`` with its mask PNGs, overlays, generated images, boxes picture and
``response.json``; ``DIR/results.jsonl`` sums them up, one line per request in file order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omniplug.cli import command

if TYPE_CHECKING:
    from omniplug.infer.pipeline import Request

#: requests answered (and written) per call of Pipeline.batch, in file order: bounds the memory held
WINDOW = 256


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", required=True, help="YAML config file (one_model.weights picks trained weights)")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. one_model.weights=output/run1/final")
    p.add_argument("--image", action="append", default=[], metavar="PATH",
                   help="image file (repeat for several; decoders use the first)")
    p.add_argument("--clip", metavar="PATH", help="a clip as input (an animated GIF/WebP/PNG, or a folder of frames): "
                                                  "--clip-frames of its frames, evenly spaced, become the images")
    p.add_argument("--clip-frames", type=int, default=4, help="frames read from --clip (default 4, as clip models train)")
    p.add_argument("--prompt", help="the question, e.g. 'Please segment the red circle.'")
    p.add_argument("--batch", metavar="FILE.jsonl", help="answer every request of this JSONL file (needs --out)")
    p.add_argument("--batch-size", type=int, default=8, help="requests run together (default: 8)")
    p.add_argument("--out", metavar="DIR", help="write masks, overlays, images and response.json here")
    p.add_argument("--json", action="store_true", help="print {text, masks: [{path, label, area}], timings} as JSON")
    p.add_argument("--max-new-tokens", type=int, default=None,
                   help="answer length limit (default 64; in a batch, for lines whose options do not set it)")
    p.add_argument("--answer-prefix", default=None, metavar="TEXT",
                   help="start the answer with this template text (task tokens allowed), e.g. '<gen_0><gen_1><gen_2><gen_3>' "
                        "to make an untrained model draw")
    p.add_argument("--device", default=None, help="e.g. cuda, cuda:1 (default: where the model was built, CPU)")


@command("infer", "answer a prompt about an image (or a JSONL batch); save masks, overlays and images")(_args)
def _run(args: argparse.Namespace) -> int:
    if args.batch:
        return _run_batch(args)
    if args.prompt is None:
        raise ValueError("give --prompt (one request) or --batch FILE.jsonl")
    from omniplug.data.images import open_clip, open_image
    from omniplug.infer.pipeline import Pipeline
    from omniplug.infer.render import save_response

    images = [open_image(p) for p in args.image]  # fail on a bad image or clip before building the model
    if args.clip:
        images = open_clip(args.clip, keep=args.clip_frames) + images
    pipe = Pipeline.from_config(args.config, args.overrides, device=args.device)
    response = pipe(images, args.prompt, max_new_tokens=args.max_new_tokens or 64, answer_prefix=args.answer_prefix)
    if args.out:
        record = save_response(response, images[0] if images else None, args.out, images=images)
    else:
        record = {"text": response.text, "overlay": None, "images": [],
                  "masks": [{"path": None, "label": m.label, "area": int(m.mask.sum())} for m in response.masks],
                  "timings": {k: round(v, 4) for k, v in response.timings.items()}}
    if args.json:
        print(json.dumps(record, indent=2))
        return 0
    print(response.text)
    for i, m in enumerate(record["masks"], start=1):
        where = f" -> {m['path']}" if m["path"] else ""
        print(f"  mask {i}: {m['area']} px" + (f", {m['label']}" if m["label"] else "") + where)
    if record.get("overlay_frames"):
        print(f"  masks on their frames -> {record['overlay_frames']}")
    if record["overlay"]:
        print(f"  overlay -> {record['overlay']}")
    for path in record["images"]:
        print(f"  image -> {path}")
    for clip in record.get("videos", []):
        print(f"  clip -> {clip['gif']} ({clip['frames']} frames; contact sheet {clip['sheet']}"
              + (f", {clip['mp4']}" if clip["mp4"] else "") + ")")
    if record.get("boxes_image"):
        print(f"  boxes -> {record['boxes_image']}")
    print("  timings: " + ", ".join(f"{k} {v:.3f}s" for k, v in response.timings.items()))
    return 0


# --- batch ----------------------------------------------------------------------------------------
@dataclass
class BatchLine:
    line: int  # 1-based line number in the file
    name: str  # output folder name
    request: "Request"


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def read_batch_file(path: str | Path, *, max_new_tokens: int | None = None, answer_prefix: str | None = None) -> list[BatchLine]:
    """Parse and check every line of a batch file (JSON syntax, keys, options, image files) without
    loading a model; a ValueError names the first bad line. ``max_new_tokens`` / ``answer_prefix``
    fill lines whose options do not set them."""
    from PIL import Image

    from omniplug.data.images import MAX_IMAGE_PIXELS
    from omniplug.infer.pipeline import Request

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"batch file not found: {path}")
    lines: list[BatchLine] = []
    names: dict[str, int] = {}
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        try:
            if not isinstance(data, dict):
                raise ValueError(f"each line must be a JSON object, got {type(data).__name__}")
            data = dict(data)
            name = data.pop("id", None)
            options = data.get("options", {})
            if isinstance(options, dict):  # anything else is refused by Request.from_dict
                options = dict(options)
                if max_new_tokens is not None:
                    options.setdefault("max_new_tokens", max_new_tokens)
                if answer_prefix is not None:
                    options.setdefault("answer_prefix", answer_prefix)
                data["options"] = options
            request = Request.from_dict(data, base_dir=path.parent)
            for image in request.images:
                if not Path(image).is_file():
                    raise ValueError(f"image not found: {image}")
                try:
                    with Image.open(image) as im:  # reads the header only
                        if im.width * im.height > MAX_IMAGE_PIXELS:
                            raise ValueError(f"image {image} is {im.width}x{im.height} pixels, above the limit of "
                                             f"{MAX_IMAGE_PIXELS}")
                except (OSError, SyntaxError) as exc:
                    raise ValueError(f"cannot read image {image}: {exc}") from None
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        folder = f"line_{number:05d}" if name is None else _SAFE.sub("_", str(name)).strip("._") or f"line_{number:05d}"
        if folder == "results.jsonl":
            raise ValueError(f"{where}: id {name!r} would overwrite the summary file; choose another id")
        if folder in names:
            raise ValueError(f"{where}: output folder {folder!r} is already used by line {names[folder]}; give unique ids")
        names[folder] = number
        lines.append(BatchLine(line=number, name=folder, request=request))
    if not lines:
        raise ValueError(f"{path}: no requests (one JSON object per line)")
    return lines


def _run_batch(args: argparse.Namespace) -> int:
    if not args.out:
        raise ValueError("--batch needs --out DIR for the results")
    if args.prompt is not None or args.image or args.clip:
        raise ValueError("--batch reads prompts and images from the file; drop --prompt/--image/--clip")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    lines = read_batch_file(args.batch, max_new_tokens=args.max_new_tokens, answer_prefix=args.answer_prefix)

    from tqdm import tqdm

    from omniplug.data.images import open_image
    from omniplug.infer.pipeline import Pipeline, RequestError
    from omniplug.infer.render import save_response

    pipe = Pipeline.from_config(args.config, args.overrides, device=args.device, batch_size=args.batch_size)
    out = Path(args.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with tqdm(total=len(lines), unit="req", desc="infer", file=sys.stderr, disable=None) as bar, \
            open(out / "results.jsonl", "w", encoding="utf-8") as summary:
        for at in range(0, len(lines), WINDOW):
            window = lines[at:at + WINDOW]
            try:
                responses = pipe.batch([b.request for b in window], progress=bar.update)
            except RequestError as exc:
                if exc.index is None:
                    raise
                raise ValueError(f"{args.batch}:{window[exc.index].line}: {exc.reason}") from None
            for b, response in zip(window, responses):
                first = b.request.images[0] if b.request.images else None
                image = open_image(first) if isinstance(first, (str, Path)) else first
                record = save_response(response, image, out / b.name)
                summary.write(json.dumps({"line": b.line, "dir": str(out / b.name), **record}) + "\n")
    print(f"{len(lines)} request(s) answered -> {out / 'results.jsonl'}")
    return 0

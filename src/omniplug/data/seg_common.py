"""Pieces shared by the referring / reasoning / semantic segmentation readers: question and
answer templates, seeded choices, mask decoding and polygon rasterising."""

from __future__ import annotations

import json
import random
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

SEG = "<seg>"  # the placeholder answer templates use; readers swap in their ``seg_token``

#: LISA-style referring questions ({sent} is the referring expression or class name)
REFER_QUESTIONS: tuple[str, ...] = (
    "Please segment the {sent}.",
    "What is {sent} in this image? Please output segmentation mask.",
)
ANSWERS: tuple[str, ...] = ("It is <seg>.", "Sure, <seg>.")

_SPECIAL_LIKE = re.compile(r"<[^<>\s]{1,40}>")


_DOUBLE_ARTICLE = re.compile(r"\b(the|a|an) (?:the|a|an)\b", re.IGNORECASE)


def fill(template: str, **fields: str) -> str:
    """``template.format(**fields)`` without a doubled article: the template "Please segment the {sent}."
    with the expression "the tree on the right" reads "Please segment the tree on the right."."""
    return _DOUBLE_ARTICLE.sub(lambda m: m.group(1), template.format(**fields))


def read_json(path: Path, what: str) -> Any:
    """``path`` parsed, or a ValueError that names the reader (``what``) and the file."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what}: {path} is not valid JSON: {exc}") from None


def open_annotations(data_dir: str, file: str, *, reader: str) -> tuple[Path, str, Any]:
    """(root, the reader's name for errors, the parsed JSON) of ``data_dir/file``; a missing or malformed file
    is an error naming the reader and the path."""
    root = Path(data_dir).expanduser()
    what = f"dataset {reader} ({root})"
    path = root / file
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} not found")
    return root, what, read_json(path, what)


def rng_for(seed: int, index: int) -> random.Random:
    """A generator that depends only on (seed, index): sample ``index`` reads the same every time."""
    return random.Random(seed * 1_000_003 + index)


def clean_phrase(text: str) -> str:
    """A referring phrase as it may appear in an answer: one line, no special-token look-alikes
    (answers are encoded as trusted text, where ``<seg>`` would become the real token)."""
    return " ".join(_SPECIAL_LIKE.sub(" ", str(text)).split()).rstrip(".")


def check_templates(questions: Sequence[str], answers: Sequence[str], *, what: str, field: str = "{sent}") -> None:
    if not questions or not answers:
        raise ValueError(f"{what}: question_templates and answer_templates must not be empty")
    for q in questions:
        if field not in q:
            raise ValueError(f"{what}: question template {q!r} lacks the {field} placeholder")
        if SEG in q:
            raise ValueError(f"{what}: question template {q!r} contains {SEG}; the mask token belongs in answers")
    for a in answers:
        if a.count(SEG) != 1:
            raise ValueError(f"{what}: answer template {a!r} must contain {SEG} exactly once")


def with_token(answer: str, seg_token: str) -> str:
    return answer.replace(SEG, seg_token) if seg_token != SEG else answer


def join_phrases(phrases: Sequence[str]) -> str:
    """["a", "b", "c"] -> "a, b and c"."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def decode_coco_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """A COCO annotation's ``segmentation`` (polygons, uncompressed or compressed RLE) -> bool HxW."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        polys = [p for p in segmentation if len(p) >= 6]
        if not polys:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation:
        if isinstance(segmentation["counts"], list):  # uncompressed RLE
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = dict(segmentation)
            if isinstance(rle["counts"], str):
                rle["counts"] = rle["counts"].encode("ascii")
        if list(rle["size"]) != [height, width]:
            raise ValueError(f"RLE size {rle['size']} does not match the image size {[height, width]}")
    else:
        raise ValueError(f"unsupported COCO segmentation {type(segmentation).__name__}: expected polygons or RLE")
    with warnings.catch_warnings():  # pycocotools' __array__ predates numpy 2's copy keyword
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_utils.decode(rle)
    if mask.ndim == 3:
        mask = mask.any(axis=2)
    return mask.astype(bool)


def rasterise_polygons(shapes: Sequence[tuple[Sequence[Sequence[float]], int]], height: int, width: int) -> np.ndarray:
    """Draw filled polygons ``(points [[x, y], ...], value)`` in the order given into a uint8 HxW map."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for points, value in shapes:
        pts = [(float(x), float(y)) for x, y in points]
        if len(pts) >= 2:
            draw.polygon(pts, fill=int(value), outline=int(value))
    return np.asarray(canvas, dtype=np.uint8).copy()


def polygon_area(points: Sequence[Sequence[float]], height: int, width: int) -> int:
    return int(rasterise_polygons([(points, 1)], height, width).sum())

"""Mask encodings for the on-disk formats: COCO RLE, panoptic RGB ids, exact pixel polygons."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from scipy import ndimage


def encode_rle(mask: np.ndarray) -> dict:
    """COCO compressed RLE with ``counts`` as str (JSON-ready)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def decode_rle(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    return mask_utils.decode({"size": rle["size"], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}).astype(bool)


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours: id = R + 256 * G + 256^2 * B."""
    return np.stack([ids % 256, (ids // 256) % 256, ids // 65536], axis=-1).astype(np.uint8)


def rgb_to_ids(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


# Clockwise ring of 8-neighbours (dy, dx) in image coordinates (y down), starting east.
_RING = ((0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1))


def _trace(component: np.ndarray) -> list[tuple[int, int]]:
    """Moore-neighbour trace of the outer boundary pixels of one 8-connected component, as (x, y)."""
    pad = np.pad(component, 1)
    ys, xs = np.nonzero(pad)
    start = (int(ys[0]), int(xs[0]))  # topmost, then leftmost: its west neighbour is background
    back = 4  # direction from the current pixel to the last background pixel examined
    cur, path, first_step = start, [start], None
    while True:
        for k in range(1, 9):
            d = (back + k) % 8
            nxt = (cur[0] + _RING[d][0], cur[1] + _RING[d][1])
            if pad[nxt]:
                break
        else:
            break  # isolated pixel
        if cur == start:  # Jacob's criterion: stop when leaving the start the same way again
            if first_step is None:
                first_step = nxt
            elif nxt == first_step:
                break
        prev = (cur[0] + _RING[(d - 1) % 8][0], cur[1] + _RING[(d - 1) % 8][1])
        back = _RING.index((prev[0] - nxt[0], prev[1] - nxt[1]))
        cur = nxt
        path.append(cur)
    if len(path) > 1 and path[-1] == start:
        path.pop()
    return [(x - 1, y - 1) for y, x in path]


def _drop_collinear(pts: list[tuple[int, int]]) -> list[tuple[int, int]]:
    if len(pts) < 3:
        return pts
    out = []
    n = len(pts)
    for i in range(n):
        (x0, y0), (x1, y1), (x2, y2) = pts[i - 1], pts[i], pts[(i + 1) % n]
        if (x1 - x0) * (y2 - y1) != (y1 - y0) * (x2 - x1) or (x1 - x0) * (x2 - x1) + (y1 - y0) * (y2 - y1) < 0:
            out.append((x1, y1))
    return out


def mask_to_polygons(mask: np.ndarray) -> list[list[list[int]]]:
    """One polygon per 8-connected component, vertices at boundary pixel centres ([x, y] = column, row).

    Filling these polygons boundary-inclusive (PIL ``ImageDraw.polygon``, OpenCV ``fillPoly``)
    reproduces ``mask`` exactly for hole-free masks; :func:`polygons_match` checks it.
    """
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [[[x, y] for x, y in _drop_collinear(_trace(labels == k))] for k in range(1, n + 1)]


def fill_polygons(polygons: list[list[list[int]]], *, height: int, width: int) -> np.ndarray:
    img = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(img)
    for poly in polygons:
        pts = [tuple(p) for p in poly]
        if len(pts) == 1:
            draw.point(pts, fill=1)
        else:
            draw.polygon(pts, fill=1, outline=1)
    return np.asarray(img, dtype=bool)


def polygons_match(mask: np.ndarray, polygons: list[list[list[int]]]) -> bool:
    return bool(np.array_equal(fill_polygons(polygons, height=mask.shape[0], width=mask.shape[1]), mask))

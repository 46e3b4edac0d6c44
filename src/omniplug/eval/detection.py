"""Box metrics: COCO mAP / AP50 with pycocotools' ``COCOeval``, and refCOCO's referring box accuracy.

Both take the boxes the model answered and the gold boxes as :class:`omniplug.types.Box` lists, one
list per request. For class detection each request ("Detect every circle.") is its own COCO image:
a prompt-conditioned detector answers one request at a time, so a box given for a class the image
lacks is a false positive of that class, and a missed box a false negative, as COCO counts them.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Sequence

import numpy as np

from omniplug.types import Box


def coco_map(predictions: Sequence[Sequence[Box]], ground_truths: Sequence[Sequence[Box]],
             image_sizes: Sequence[tuple[int, int]]) -> dict[str, float]:
    """COCO box AP: ``map`` (IoU .50:.95), ``ap50``, ``ap75``, ``ar100`` and ``ap50_<class>`` per class.

    ``image_sizes``: (height, width) per request. Classes are the labels of the gold boxes; a predicted
    label no gold box has is a false positive that lowers nothing COCO averages (it has no AP of its
    own) and is counted in ``unknown_label_boxes``. No gold box at all -> ValueError (AP is undefined).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not (len(predictions) == len(ground_truths) == len(image_sizes)):
        raise ValueError(f"coco_map: {len(predictions)} predictions, {len(ground_truths)} ground truths and "
                         f"{len(image_sizes)} image sizes; give one of each per request")
    labels = sorted({b.label for gold in ground_truths for b in gold})
    if not labels:
        raise ValueError("coco_map: no ground-truth box in any request; AP is undefined")
    cat_ids = {label: i + 1 for i, label in enumerate(labels)}
    images = [{"id": i, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(image_sizes)]
    annotations = []
    for i, gold in enumerate(ground_truths):
        for b in gold:
            x0, y0, x1, y1 = b.xyxy
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": cat_ids[b.label],
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": b.area(), "iscrowd": 0})
    detections, unknown = [], 0
    for i, boxes in enumerate(predictions):
        for b in boxes:
            if b.label not in cat_ids:
                unknown += 1
                continue
            x0, y0, x1, y1 = b.xyxy
            detections.append({"image_id": i, "category_id": cat_ids[b.label], "bbox": [x0, y0, x1 - x0, y1 - y0],
                               "score": float(b.score)})
    out = {"map": 0.0, "ap50": 0.0, "ap75": 0.0, "ar100": 0.0, "boxes": float(len(detections)),
           "gold_boxes": float(len(annotations)), "unknown_label_boxes": float(unknown)}
    out.update({f"ap50_{label}": 0.0 for label in labels})
    if not detections:
        return out
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pycocotools' numpy usage
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations,
                      "categories": [{"id": i, "name": label} for label, i in cat_ids.items()]}
        gt.createIndex()
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.params.maxDets = [1, 10, 100]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [max(float(s), 0.0) for s in ev.stats]  # -1 marks "no such gold box" (e.g. no small objects)
    out.update({"map": stats[0], "ap50": stats[1], "ap75": stats[2], "ar100": stats[8]})
    precision = ev.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    for label, k in cat_ids.items():
        p = precision[0, :, k - 1, 0, -1]
        p = p[p > -1]
        out[f"ap50_{label}"] = float(p.mean()) if p.size else 0.0
    return out


def referring_accuracy(predictions: Sequence[Sequence[Box]], targets: Sequence[Box], *,
                       threshold: float = 0.5) -> dict[str, float]:
    """refCOCO's box protocol: a request is right when its top-scoring box has IoU >= ``threshold`` with the
    referred object's box (no box answered = wrong). ``mean_iou`` is the top box's IoU, 0 when none;
    ``no_box`` the fraction answered with no box at all."""
    if len(predictions) != len(targets):
        raise ValueError(f"referring_accuracy: {len(predictions)} predictions but {len(targets)} targets")
    if not targets:
        raise ValueError("referring_accuracy: no requests")
    ious = []
    for boxes, gold in zip(predictions, targets):
        if not boxes:
            ious.append(0.0)
            continue
        best = max(boxes, key=lambda b: b.score)
        ious.append(best.iou(gold))
    ious_arr = np.asarray(ious)
    return {"accuracy": float((ious_arr >= threshold).mean()), "mean_iou": float(ious_arr.mean()),
            "no_box": float(np.mean([not b for b in predictions]))}

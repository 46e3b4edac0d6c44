"""Per-task evaluation on the procedural world: PQ math by hand, and the whole table end to end."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest

from omniplug.cli import main
from omniplug.eval.world import BOX_TASKS, TASKS, _labels_before_triggers, panoptic_quality

MASK_MODEL_TASKS = set(TASKS) - set(BOX_TASKS)  # the seg + gen model below has no box decoder


def _box(y0, y1, x0, x1, shape=(8, 8)):
    m = np.zeros(shape, dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_panoptic_quality_by_hand():
    sky, grass = _box(0, 4, 0, 8), _box(4, 8, 0, 8)
    circle = _box(5, 7, 1, 3)
    gold = [("sky", sky), ("grass", grass & ~circle), ("circle", circle)]
    # perfect prediction (painting order puts the circle on top of grass)
    assert panoptic_quality([([("sky", sky), ("grass", grass), ("circle", circle)], gold)])["pq"] == pytest.approx(1.0)
    # the circle labelled "square": circle FN, square FP; sky and grass perfect -> per-category PQ 1, 1, 0
    res = panoptic_quality([([("sky", sky), ("grass", grass), ("square", circle)], gold)])
    assert res["pq"] == pytest.approx(2 / 3) and res["fn"] == 1 and res["fp"] == 1
    # IoU 0.5 exactly is not a match (COCO: > 0.5)
    half = _box(0, 2, 0, 8)
    assert panoptic_quality([([("sky", half)], [("sky", sky)])])["tp"] == 0


def test_labels_before_triggers():
    text = "sky <seg>, grass <seg>, small red circle <seg>, thing <seg>."
    assert _labels_before_triggers(text, "<seg>", ["sky", "grass", "circle"]) == ["sky", "grass", "circle", None]


def test_world_eval_end_to_end(tiny_dir, tmp_path):
    """A (random) model with mask and image decoders gets a figure for every task; figures are in range."""
    if not (tiny_dir / "edit.yaml").is_file():
        pytest.skip("edit.yaml needs the tiny SAM and SD checkpoints")
    assert main(["world", "generate", "--out", str(tmp_path / "val"), "--n", "6", "--seed", "5", "--split", "val"]) == 0
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(["eval", "-c", str(tiny_dir / "edit.yaml"), "--world", str(tmp_path / "val"),
                     "--max-samples", "2", "--batch-size", "2", "--json"])
    assert code == 0
    report = json.loads(out.getvalue())
    assert set(report) == MASK_MODEL_TASKS | {"image_reliance"}
    reliance = report["image_reliance"]  # LM loss with own vs another scene's image
    assert reliance["n"] == 2 and abs(reliance["gap"] - (reliance["lm_loss_other_image"] - reliance["lm_loss"])) < 1e-9
    for task, figures in report.items():
        for key, value in figures.items():
            if key in ("object_f1", "colour_f1", "accuracy", "ciou", "giou", "miou", "pq", "exact", "answered"):
                assert 0.0 <= value <= 1.0, (task, key, value)
    assert {"exact", "object_f1", "colour_f1", "answered"} <= set(report["generation"])


def test_eval_finds_world_splits(tiny_dir, tmp_path):
    """`--data` on a world split gives the world table; `data.world_eval` generates val + hold-out splits itself."""
    if not (tiny_dir / "edit.yaml").is_file():
        pytest.skip("edit.yaml needs the tiny SAM and SD checkpoints")
    assert main(["world", "generate", "--out", str(tmp_path / "val"), "--n", "4", "--seed", "5", "--split", "val"]) == 0
    common = ["--max-samples", "1", "--batch-size", "2", "--json"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["eval", "-c", str(tiny_dir / "edit.yaml"), "--data", str(tmp_path / "val"), *common]) == 0
    assert set(json.loads(out.getvalue())) == MASK_MODEL_TASKS  # one sample per task: too few for the reliance check

    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["eval", "-c", str(tiny_dir / "edit.yaml"), f"data.world_eval.root={tmp_path / 'auto'}",
                     "data.world_eval.n=3", *common]) == 0
    report = json.loads(out.getvalue())
    assert set(report) == MASK_MODEL_TASKS | {"holdout"} and set(report["holdout"]) == MASK_MODEL_TASKS
    meta = json.loads((tmp_path / "auto" / "holdout" / "meta.json").read_text())
    assert meta["split"] == "holdout" and meta["seed"] == 102


def test_world_eval_scores_what_the_model_can_do(tiny_dir, tmp_path):
    """A mask-only model is scored on captions, VQA and the mask tasks (no generation row); --tasks narrows it."""
    assert main(["world", "generate", "--out", str(tmp_path / "val"), "--n", "3", "--seed", "5", "--split", "val"]) == 0
    common = ["--data", str(tmp_path / "val"), "--max-samples", "1", "--batch-size", "2", "--json"]
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["eval", "-c", str(tiny_dir / "seg.yaml"), *common]) == 0
    assert set(json.loads(out.getvalue())) == MASK_MODEL_TASKS - {"generation"}
    out = io.StringIO()
    with redirect_stdout(out):
        assert main(["eval", "-c", str(tiny_dir / "seg.yaml"), *common, "--tasks", "vqa,referring"]) == 0
    assert set(json.loads(out.getvalue())) == {"vqa", "referring"}

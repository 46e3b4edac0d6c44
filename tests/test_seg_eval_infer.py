"""gIoU / cIoU on hand-made masks, ``omniplug eval`` JSON, the Pipeline and ``omniplug infer``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from omniplug.eval.segmentation import SegCounts, mask_iou, summarise
from omniplug.types import Mask
from tests.forced import force_answers


# --- metrics by hand --------------------------------------------------------------------------------
def test_iou_on_hand_made_masks():
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True  # 4 px
    b = np.zeros((4, 4), bool)
    b[:2, 1:3] = True  # 4 px, 2 shared
    assert mask_iou(a, b) == (2, 6, pytest.approx(1 / 3))
    empty = np.zeros((4, 4), bool)
    assert mask_iou(empty, empty) == (0, 0, 1.0)  # nothing to find, nothing found
    assert mask_iou(a, empty) == (0, 4, 0.0)
    with pytest.raises(ValueError, match="differ in shape"):
        mask_iou(a, np.zeros((2, 2), bool))


def test_giou_ciou_and_summary_shape():
    a = np.zeros((4, 4), bool)
    a[:2, :2] = True
    b = np.zeros((4, 4), bool)
    b[:2, 1:3] = True
    big_t = np.ones((10, 10), bool)
    big_p = np.zeros((10, 10), bool)
    big_p[:5] = True
    one, two = SegCounts(), SegCounts()
    one.add(a, b)  # IoU 1/3, I 2, U 6
    one.add(np.zeros((3, 3), bool), np.zeros((3, 3), bool))  # IoU 1, I 0, U 0
    two.add(big_p, big_t)  # IoU 1/2, I 50, U 100
    assert one.giou == pytest.approx((1 / 3 + 1) / 2) and one.ciou == pytest.approx(2 / 6)
    table = summarise({"one": one, "two": two})
    assert set(table) == {"one", "two", "overall"}
    assert set(table["overall"]) == {"giou", "ciou", "n"}
    assert table["overall"]["n"] == 3
    assert table["overall"]["giou"] == pytest.approx((1 / 3 + 1 + 1 / 2) / 3)
    assert table["overall"]["ciou"] == pytest.approx(52 / 106)
    assert SegCounts().as_dict() == {"giou": 0.0, "ciou": 0.0, "n": 0}
    only_empty = SegCounts()
    only_empty.add(np.zeros((2, 2), bool), np.zeros((2, 2), bool))
    assert only_empty.ciou == 1.0


# --- model-level ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def seg_model(tiny_dir):
    from omniplug.build import build_model

    torch.manual_seed(0)
    return build_model(tiny_dir / "seg.yaml", ["one_model.conv_type=plain"])


def test_evaluate_segmentation_both_modes(seg_model, tiny_dir):
    from omniplug.build import build_entry
    from omniplug.eval.segmentation import evaluate_segmentation

    cfg = seg_model.config
    val = build_entry(cfg.entry("dataset", "shapes_val", where="test"))
    multi = build_entry(cfg.entry("dataset", "shapes_val", where="test"), refs_per_sample=3)
    seg_model.train()
    tf = evaluate_segmentation(seg_model, {"val": val, "multi": multi}, max_samples=3, batch_size=2)
    assert seg_model.training  # the caller's mode is restored
    n_multi = sum(len(multi[i].targets["seg"]) for i in range(3))
    assert tf["val"]["n"] == 3 and tf["multi"]["n"] == n_multi and tf["overall"]["n"] == 3 + n_multi
    for row in tf.values():
        assert set(row) == {"giou", "ciou", "n"} and 0.0 <= row["giou"] <= 1.0 and 0.0 <= row["ciou"] <= 1.0
    gen = evaluate_segmentation(seg_model, {"val": val}, mode="generated", max_samples=2, max_new_tokens=3)
    assert gen["val"]["n"] == 2  # targets of the reference's last answer, missing predictions count as empty


def _force_answer(monkeypatch, model, answer: str):
    """Make the LLM 'generate' ``answer`` (the rest of the path, decoders included, is real)."""
    force_answers(monkeypatch, model, answer)


def test_pipeline_response_markers_labels_and_timings(seg_model, tiny_dir, monkeypatch):
    from omniplug.infer.pipeline import Pipeline, trigger_labels

    _force_answer(monkeypatch, seg_model, "the red circle: <seg>, the blue square: <seg>.")
    pipe = Pipeline(seg_model)
    image = tiny_dir / "seg_data" / "shapes_refcoco" / "images" / "val_0024.png"
    resp = pipe(image, "Please segment the red circle and the blue square.", max_new_tokens=32)
    assert resp.text == "the red circle: [mask 1], the blue square: [mask 2]."
    assert [m.label for m in resp.masks] == ["the red circle", "the blue square"]
    assert all(m.mask.shape == (48, 64) and m.mask.dtype == bool for m in resp.masks)
    assert set(resp.timings) == {"preprocess", "generate", "postprocess", "total"}
    raw = Pipeline(seg_model, markers=False)(Image.open(image), "Segment them.")
    assert raw.text.count("<seg>") == 2
    assert pipe.display_text("It is<seg>.<seg>.</s>") == "It is [mask 1]. [mask 2]."
    assert trigger_labels("It is <seg>. The cat: <seg>", "<seg>") == [None, "The cat"]
    _force_answer(monkeypatch, seg_model, "I see no mask here.")
    assert pipe(image, "Hello?").masks == []
    with pytest.raises(ValueError, match="places 1 image"):
        from omniplug.data.conversation import Turn

        pipe([], "x", history=[Turn(role="user", text="look", images=1), Turn(role="assistant", text="ok")])


def test_infer_cli_writes_mask_and_overlay_pngs(seg_model, tiny_dir, tmp_path, monkeypatch, capsys):
    from omniplug.cli import main

    _force_answer(monkeypatch, seg_model, "Sure, <seg>.")
    image = tiny_dir / "seg_data" / "shapes_refcoco" / "images" / "val_0025.png"
    out = tmp_path / "out"
    rc = main(["infer", "-c", str(tiny_dir / "seg.yaml"), "one_model.conv_type=plain", "--image", str(image),
               "--prompt", "Please segment the red circle.", "--out", str(out), "--json", "--max-new-tokens", "16"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["text"] == "Sure, [mask 1]." and len(report["masks"]) == 1
    mask_png = Image.open(report["masks"][0]["path"])
    assert mask_png.size == (64, 48) and mask_png.mode == "L"
    assert set(np.unique(np.asarray(mask_png)).tolist()) <= {0, 255}
    assert report["masks"][0]["area"] == int((np.asarray(mask_png) > 0).sum())
    overlay = Image.open(out / "overlay.png")
    assert overlay.size == (64, 48) and overlay.mode == "RGB" and report["overlay"] == str(out / "overlay.png")
    rc = main(["infer", "-c", str(tiny_dir / "seg.yaml"), "--image", str(tmp_path / "nope.png"), "--prompt", "x"])
    assert rc == 2 and "nope.png" in capsys.readouterr().err


def test_overlay_colours_each_mask():
    from omniplug.infer.render import PALETTE, overlay

    image = Image.new("RGB", (4, 2), (0, 0, 0))
    m1 = np.zeros((2, 4), bool)
    m1[:, :2] = True
    m2 = np.zeros((2, 4), bool)
    m2[:, 3] = True
    px = np.asarray(overlay(image, [Mask(m1, 1.0), Mask(m2, 1.0)], alpha=0.5))
    assert tuple(px[0, 0]) == tuple(round(c / 2) for c in PALETTE[0])
    assert tuple(px[0, 3]) == tuple(round(c / 2) for c in PALETTE[1])
    assert tuple(px[0, 2]) == (0, 0, 0)


def test_eval_cli_json(tiny_dir, capsys):
    from omniplug.cli import main

    rc = main(["eval", "-c", str(tiny_dir / "seg.yaml"), "one_model.conv_type=plain", "--json", "--max-samples", "2"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"shapes_val", "overall"} and report["shapes_val"]["n"] == 2
    rc = main(["eval", "-c", str(tiny_dir / "seg.yaml"), "one_model.conv_type=plain", "--json", "--max-samples", "1",
               "--data", str(tiny_dir / "seg_data" / "shapes_refcoco"), "--mode", "both", "--max-new-tokens", "2"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"teacher_forced", "generated"}
    assert set(report["teacher_forced"]) == {"shapes_refcoco", "overall"}

"""Box data and box metrics: the ``coco_detection`` reader, refcoco's ``target: box``, the world's box tasks,
COCO mAP / AP50 (pycocotools) and refCOCO's referring box accuracy — on small files written here."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from omniplug.data.coco_detection import CocoDetectionDataset
from omniplug.data.refcoco import RefCocoDataset
from omniplug.eval.detection import coco_map, referring_accuracy
from omniplug.types import Box


def _write(root, *, images=None, annotations=None, categories=None):
    (root / "images").mkdir(exist_ok=True)
    images = images or [{"id": 1, "file_name": "a.png", "width": 40, "height": 30},
                        {"id": 2, "file_name": "b.png", "width": 40, "height": 30}]
    for im in images:
        if im["width"] > 0 and im["height"] > 0:
            Image.new("RGB", (im["width"], im["height"]), (9, 9, 9)).save(root / "images" / im["file_name"])
    annotations = annotations if annotations is not None else [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 8], "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 10, 5, 5], "iscrowd": 0},
        {"id": 3, "image_id": 1, "category_id": 2, "bbox": [0, 0, 40, 30], "iscrowd": 1},  # crowd: skipped
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [5, 5, 10, 10], "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 3, "bbox": [1, 1, 4, 4], "iscrowd": 0},  # a part
    ]
    categories = categories or [{"id": 1, "name": "circle", "supercategory": "shape"},
                                {"id": 2, "name": "square", "supercategory": "shape"},
                                {"id": 3, "name": "door", "supercategory": "house"}]
    (root / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                     "categories": categories}))
    return root


def test_one_sample_per_present_class_plus_absent_classes_with_empty_targets(tmp_path):
    ds = CocoDetectionDataset(data_dir=str(_write(tmp_path)), supercategories=["shape"], absent_per_image=1)
    by_id = {ds[i].meta["id"]: ds[i] for i in range(len(ds))}
    # image 1 holds circles (its square is a crowd box, skipped) -> the square is its absent class; image 2: square
    assert sorted(by_id) == ["1:1", "1:2", "2:1", "2:2"]
    circles = by_id["1:1"]
    assert circles.targets == {"det": [[Box((2, 3, 12, 11), "circle"), Box((20, 10, 25, 15), "circle")]]}
    assert circles.turns[0].images == 1 and "circle" in circles.turns[0].text
    assert circles.turns[1].text.count("<det>") == 1
    assert by_id["1:2"].targets == {"det": [[]]} and by_id["2:1"].targets == {"det": [[]]}
    assert by_id["2:2"].images[0].size == (40, 30)
    assert ds.box_protocol == "detection"
    again = CocoDetectionDataset(data_dir=str(tmp_path), supercategories=["shape"])
    assert [again[i].turns[0].text for i in range(len(again))] == [ds[i].turns[0].text for i in range(len(ds))]
    # no filter: the part class counts too; absent_per_image 0 asks only for what is there
    assert len(CocoDetectionDataset(data_dir=str(tmp_path), absent_per_image=0)) == 3


@pytest.mark.parametrize("change, match", [
    ({"annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 3, 0, 8]}]}, "annotation 7.*degenerate"),
    ({"annotations": [{"id": 8, "image_id": 1, "category_id": 1, "bbox": [30, 3, 20, 8]}]},
     "annotation 8.*outside its 40x30 image"),
    ({"images": [{"id": 1, "file_name": "z.png", "width": 0, "height": 30}], "annotations": []}, "is 0x30"),
])
def test_bad_boxes_and_images_are_errors_that_name_the_annotation(tmp_path, change, match):
    with pytest.raises(ValueError, match=match):
        CocoDetectionDataset(data_dir=str(_write(tmp_path, **change)))


def test_bad_filters_and_templates_say_what_exists(tmp_path):
    _write(tmp_path)
    with pytest.raises(ValueError, match=r"categories \['dog'\] are not in instances.json; its classes: circle, door"):
        CocoDetectionDataset(data_dir=str(tmp_path), categories=["dog"])
    with pytest.raises(ValueError, match="supercategories"):
        CocoDetectionDataset(data_dir=str(tmp_path), supercategories=["animal"])
    with pytest.raises(ValueError, match="exactly once"):
        CocoDetectionDataset(data_dir=str(tmp_path), answer_templates=("Sure.",))
    with pytest.raises(FileNotFoundError, match="coco_detection.*instances.json not found"):
        CocoDetectionDataset(data_dir=str(tmp_path / "nowhere"))


def test_refcoco_reads_boxes_with_target_box(tmp_path):
    _write(tmp_path)
    refs = [{"ref_id": 1, "ann_id": 1, "image_id": 1, "category_id": 1, "split": "val",
             "sentences": [{"sent": "the left circle", "sent_id": 1}]},
            {"ref_id": 2, "ann_id": 4, "image_id": 2, "category_id": 2, "split": "val",
             "sentences": [{"sent": "the square", "sent_id": 2}]}]
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    ds = RefCocoDataset(data_dir=str(tmp_path), split="val", target="box", seg_token="<det>", task="det")
    s = ds[0]
    assert s.targets == {"det": [[Box((2, 3, 12, 11), "circle")]]}
    assert s.turns[0].text in ("Where is the left circle? Give its box.", "Please give the bounding box of the left circle.")
    assert "<det>" in s.turns[1].text and ds.box_protocol == "referring"
    assert RefCocoDataset(data_dir=str(tmp_path), split="val").box_protocol is None  # masks, as before
    with pytest.raises(ValueError, match="target must be 'mask' or 'box'"):
        RefCocoDataset(data_dir=str(tmp_path), split="val", target="polygon")


def test_world_box_tasks_read_the_world_split(tmp_path):
    from omniplug.data.world_tasks import WorldTaskDataset

    common = dict(root=str(tmp_path / "w"), n=6, seed=3)
    det = WorldTaskDataset(task="detection", **common)
    parts = {"wall", "door", "roof", "trunk", "crown", "body", "wheel"}
    labels = {b.label for i in range(len(det)) for b in det[i].targets["det"][0]}
    assert labels and not labels & parts
    assert any(not det[i].targets["det"][0] for i in range(len(det)))  # absent classes are asked too
    ref = WorldTaskDataset(task="referring_box", **common)
    s = ref[0]
    assert len(s.targets["det"]) == 1 and len(s.targets["det"][0]) == 1 and "<det>" in s.turns[1].text


# ---- metrics ----------------------------------------------------------------------------------------
GOLD = [[Box((0, 0, 10, 10), "circle"), Box((20, 20, 30, 30), "circle")], [Box((5, 5, 15, 15), "square")], []]
SIZES = [(40, 40)] * 3


def test_coco_map_is_one_for_exact_boxes_and_falls_with_errors():
    exact = [[Box(b.xyxy, b.label, 0.9) for b in g] for g in GOLD]
    perfect = coco_map(exact, GOLD, SIZES)
    assert perfect["map"] == pytest.approx(1.0) and perfect["ap50"] == pytest.approx(1.0)
    assert perfect["ap50_circle"] == pytest.approx(1.0)
    missed = coco_map([exact[0][:1], exact[1], []], GOLD, SIZES)  # one circle missed
    assert missed["ap50_circle"] == pytest.approx(0.5, abs=0.01) and missed["ap50_square"] == pytest.approx(1.0)
    # a confident square in the request that has none (an absent class) is a false positive ranked first
    false_pos = coco_map([exact[0], exact[1], [Box((0, 0, 8, 8), "square", 0.99)]], GOLD, SIZES)
    assert false_pos["ap50_square"] < 0.6
    shifted = coco_map([[Box(tuple(v + 4 for v in b.xyxy), b.label, 0.9) for b in g] for g in GOLD], GOLD, SIZES)
    assert shifted["map"] < shifted["ap50"] < 1.0 or shifted["ap50"] == 0.0
    nothing = coco_map([[], [], []], GOLD, SIZES)
    assert nothing["ap50"] == 0.0 and nothing["boxes"] == 0.0


def test_coco_map_bad_input():
    with pytest.raises(ValueError, match="no ground-truth box"):
        coco_map([[]], [[]], [(10, 10)])
    with pytest.raises(ValueError, match="one of each per request"):
        coco_map([[]], GOLD, SIZES)


def test_referring_accuracy_scores_the_top_box_at_iou_half():
    gold = [Box((0, 0, 10, 10)), Box((0, 0, 10, 10)), Box((0, 0, 10, 10))]
    preds = [[Box((0, 0, 10, 10), score=0.3), Box((50, 50, 60, 60), score=0.9)],  # the top box is wrong
             [Box((0, 0, 10, 8), score=0.8)],  # IoU 0.8
             []]
    out = referring_accuracy(preds, gold)
    assert out["accuracy"] == pytest.approx(1 / 3) and out["mean_iou"] == pytest.approx(0.8 / 3)
    assert out["no_box"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 predictions but 3 targets"):
        referring_accuracy(preds[:2], gold)

"""Segmentation dataset readers on small files written here: refcoco (RLE + polygons), reason_seg,
semantic_seg, llava_json, and safe image opening."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from omniplug.data.images import open_image
from omniplug.data.llava_json import LlavaJsonDataset
from omniplug.data.reason_seg import ReasonSegDataset
from omniplug.data.refcoco import RefCocoDataset
from omniplug.data.semantic_seg import SemanticSegDataset
from omniplug.registry import DATASETS, load_builtin_plugins

H, W = 6, 8


def _rle_uncompressed(mask: np.ndarray) -> dict:
    flat = mask.flatten(order="F").astype(int)
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


@pytest.fixture
def refcoco_dir(tmp_path):
    """One 6x8 image with three objects: a polygon square, an RLE blob (compressed), an RLE bar (uncompressed)."""
    from pycocotools import mask as mask_utils

    (tmp_path / "images").mkdir()
    Image.new("RGB", (W, H), (10, 20, 30)).save(tmp_path / "images" / "a.png")
    Image.new("RGB", (W, H), (0, 0, 0)).save(tmp_path / "images" / "b.png")
    blob = np.zeros((H, W), bool)
    blob[3:5, 5:8] = True
    bar = np.zeros((H, W), bool)
    bar[5, :] = True
    rle = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
    instances = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W},
                   {"id": 2, "file_name": "b.png", "height": H, "width": W}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},  # x 1..3, y 1..2
            {"id": 11, "image_id": 1, "category_id": 2,
             "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}},
            {"id": 12, "image_id": 2, "category_id": 2, "segmentation": _rle_uncompressed(bar)},
        ],
        "categories": [{"id": 1, "name": "square"}, {"id": 2, "name": "blob"}],
    }
    refs = [
        {"ref_id": 1, "ann_id": 10, "image_id": 1, "category_id": 1, "split": "val",
         "sentences": [{"sent": "the square", "sent_id": 100, "tokens": ["the", "square"]},
                       {"sent": "left thing <seg>", "sent_id": 101, "tokens": []}]},
        {"ref_id": 2, "ann_id": 11, "image_id": 1, "category_id": 2, "split": "val",
         "sentences": [{"sent": "blob", "sent_id": 102, "tokens": ["blob"]}]},
        {"ref_id": 3, "ann_id": 12, "image_id": 2, "category_id": 2, "split": "val",
         "sentences": [{"sent": "bottom bar", "sent_id": 103, "tokens": []}]},
        {"ref_id": 4, "ann_id": 12, "image_id": 2, "category_id": 2, "split": "train",
         "sentences": [{"sent": "bar", "sent_id": 104, "tokens": []}]},
    ]
    (tmp_path / "instances.json").write_text(json.dumps(instances))
    (tmp_path / "refs.json").write_text(json.dumps(refs))
    square = np.zeros((H, W), bool)
    square[1:3, 1:4] = True
    return tmp_path, {10: square, 11: blob, 12: bar}


def test_builtin_readers_are_registered():
    load_builtin_plugins()
    for name in ("refcoco", "reason_seg", "semantic_seg", "llava_json"):
        assert name in DATASETS.names()


def test_refcoco_polygon_and_rle_masks(refcoco_dir):
    root, expected = refcoco_dir
    ds = RefCocoDataset(data_dir=str(root), split="val")
    assert len(ds) == 4  # (ref, sentence) pairs of split val
    by_ann = {}
    for i in range(len(ds)):
        s = ds[i]
        assert s.images[0].size == (W, H) and s.images[0].mode == "RGB"
        assert [t.role for t in s.turns] == ["user", "assistant"] and s.turns[0].images == 1
        assert s.turns[1].text.count("<seg>") == 1 and "<seg>" not in s.turns[0].text
        (mask,) = s.targets["seg"]
        assert mask.dtype == bool and mask.shape == (H, W)
        by_ann[s.meta["ann_ids"][0]] = mask
        assert s.meta["dataset"] == "refcoco" and s.meta["labels"]
    for ann_id, mask in expected.items():
        np.testing.assert_array_equal(by_ann[ann_id], mask)
    # a special-token look-alike inside a referring expression never reaches the text as a token
    assert "<seg>" not in ds[1].turns[0].text and ds[1].meta["labels"] == ["left thing"]
    assert ds[0].turns[0].text == ds[0].turns[0].text  # deterministic per index
    assert RefCocoDataset(data_dir=str(root), split="val")[2].turns == ds[2].turns


def test_refcoco_several_refs_in_one_answer_keep_order(refcoco_dir):
    root, expected = refcoco_dir
    ds = RefCocoDataset(data_dir=str(root), split="val", refs_per_sample=2, seg_token="[SEG]")
    assert len(ds) == 2  # image 1: refs 1+2, image 2: ref 3
    s = ds[0]
    answer = s.turns[1].text
    assert answer.count("[SEG]") == 2 and "<seg>" not in answer
    first, second = s.meta["labels"]
    assert answer.index(first) < answer.index(second) and answer.endswith(".")
    assert answer == f"{first}: [SEG], {second}: [SEG]."
    assert s.turns[0].text == f"Please segment the {first} and {second}."
    np.testing.assert_array_equal(s.targets["seg"][0], expected[s.meta["ann_ids"][0]])
    np.testing.assert_array_equal(s.targets["seg"][1], expected[s.meta["ann_ids"][1]])


def test_refcoco_several_refs_as_turns(refcoco_dir):
    """``multi_turn``: one single-object question per ref (the image on the first), masks in turn order."""
    root, expected = refcoco_dir
    ds = RefCocoDataset(data_dir=str(root), split="val", refs_per_sample=2, multi_turn=True)
    assert len(ds) == 2
    s = ds[0]
    assert [t.role for t in s.turns] == ["user", "assistant"] * 2 and [t.images for t in s.turns] == [1, 0, 0, 0]
    for k, label in enumerate(s.meta["labels"]):
        assert label in s.turns[2 * k].text and s.turns[2 * k + 1].text.count("<seg>") == 1
        np.testing.assert_array_equal(s.targets["seg"][k], expected[s.meta["ann_ids"][k]])
    assert [t.text for t in ds[0].turns] == [t.text for t in s.turns]  # deterministic
    assert {tuple(RefCocoDataset(data_dir=str(root), split="val", refs_per_sample=2, multi_turn=True,
                                 seed=seed)[0].meta["ann_ids"]) for seed in range(8)} == {(10, 11), (11, 10)}


def test_refcoco_refuses_pickles_and_reports_missing_splits(refcoco_dir):
    root, _ = refcoco_dir
    (root / "refs(unc).p").write_bytes(b"\x80\x04N.")
    with pytest.raises(ValueError, match="pickle.*JSON"):
        RefCocoDataset(data_dir=str(root), refs_file="refs(unc).p")
    with pytest.raises(ValueError, match="no refs with split 'testA'.*train, val"):
        RefCocoDataset(data_dir=str(root), split="testA")
    with pytest.raises(FileNotFoundError, match="instances_file"):
        RefCocoDataset(data_dir=str(root), instances_file="nope.json")
    with pytest.raises(ValueError, match="placeholder"):
        RefCocoDataset(data_dir=str(root), question_templates=("Segment it.",))


def test_reason_seg_polygons_target_and_ignore(tmp_path):
    Image.new("RGB", (W, H)).save(tmp_path / "x.jpg")
    anno = {"text": ["something to sit on", "the chair"], "is_sentence": True,
            "shapes": [{"label": "target", "points": [[1, 1], [5, 1], [5, 4], [1, 4]]},
                       {"label": "ignore", "points": [[2, 2], [3, 2], [3, 3], [2, 3]]},
                       {"label": "flag", "points": [[0, 0], [7, 0], [7, 5]]}]}
    (tmp_path / "x.json").write_text(json.dumps(anno))
    ds = ReasonSegDataset(data_dir=str(tmp_path))
    assert len(ds) == 2
    s = ds[0]
    assert s.turns[0].text == "something to sit on Please output segmentation mask."
    (mask,) = s.targets["seg"]
    expected = np.zeros((H, W), bool)
    expected[1:5, 1:6] = True
    expected[2:4, 2:4] = False  # the smaller ignore polygon is drawn over the target
    np.testing.assert_array_equal(mask, expected)
    assert s.meta["ignore"].sum() == 4
    (tmp_path / "y.png").write_bytes(b"")  # an image without annotation is skipped
    assert len(ReasonSegDataset(data_dir=str(tmp_path))) == 2
    bad = dict(anno, shapes=[{"label": "cat", "points": [[0, 0], [1, 1], [0, 1]]}])
    (tmp_path / "x.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="neither 'target' nor 'ignore'"):
        ds[0]


def _semantic_dir(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    labels = np.zeros((H, W), np.uint8)
    labels[:2] = 1
    labels[4:, :3] = 2
    labels[5, 7] = 255
    Image.new("RGB", (W, H)).save(tmp_path / "images" / "p.jpg")
    Image.fromarray(labels, mode="L").save(tmp_path / "labels" / "p.png")
    (tmp_path / "classes.json").write_text(json.dumps(["sky", "tree", "car", "boat"]))
    return labels


def test_semantic_seg_all_present_classes_in_order(tmp_path):
    labels = _semantic_dir(tmp_path)
    ds = SemanticSegDataset(data_dir=str(tmp_path), classes_per_sample=None)
    s = ds[0]
    assert s.meta["labels"] == ["sky", "tree", "car"]
    assert [t.role for t in s.turns] == ["user", "assistant"] * 3
    assert [t.images for t in s.turns if t.role == "user"] == [1, 0, 0]
    assert s.turns[2].text == "What is tree in this image? Please output segmentation mask."
    assert all(t.text == "It is <seg>." for t in s.turns[1::2])
    for mask, value in zip(s.targets["seg"], (0, 1, 2)):
        np.testing.assert_array_equal(mask, labels == value)


def test_semantic_seg_shuffled_classes_come_first_in_turn(tmp_path):
    labels = _semantic_dir(tmp_path)
    def first_asked(seed):
        return SemanticSegDataset(data_dir=str(tmp_path), classes_per_sample=None, shuffle_classes=True,
                                  seed=seed)[0].meta["labels"][0]

    assert {first_asked(seed) for seed in range(12)} == {"sky", "tree", "car"}  # each class is sometimes first
    ds = SemanticSegDataset(data_dir=str(tmp_path), classes_per_sample=None, shuffle_classes=True, seed=3)
    s, again = ds[0], ds[0]
    assert s.meta["labels"] == again.meta["labels"]  # deterministic per seed and index
    value = {"sky": 0, "tree": 1, "car": 2}
    for name, mask in zip(s.meta["labels"], s.targets["seg"]):  # masks follow their questions
        np.testing.assert_array_equal(mask, labels == value[name])
    assert [t.images for t in s.turns if t.role == "user"] == [1, 0, 0]


def test_semantic_seg_absent_class_has_empty_target(tmp_path):
    _semantic_dir(tmp_path)
    ds = SemanticSegDataset(data_dir=str(tmp_path), classes_per_sample=1, absent_per_sample=1,
                            ignore_classes=("sky",))
    s = ds[0]
    assert s.meta["absent"] == ["boat"] and "sky" not in s.meta["labels"]
    answers = [t.text for t in s.turns if t.role == "assistant"]
    k = answers.index("There is no boat in this image: <seg>.")
    assert not s.targets["seg"][k].any() and s.targets["seg"][1 - k].any()
    text_only = SemanticSegDataset(data_dir=str(tmp_path), classes_per_sample=1, absent_per_sample=1,
                                   absent_answer_templates=("No, there is no {class_name}.",))[0]
    assert len(text_only.targets["seg"]) == 1 and "No, there is no boat." in [t.text for t in text_only.turns]


def test_semantic_seg_asks_named_classes_in_their_own_forms(tmp_path):
    """question_templates_by_class: stuff in the referring form, things in the class template."""
    _semantic_dir(tmp_path)
    forms = ["Please segment the {class_name}.", "Segment the {class_name}."]
    questions = set()
    for seed in range(8):
        s = SemanticSegDataset(data_dir=str(tmp_path), classes_per_sample=None, seed=seed,
                               question_templates_by_class={"sky": forms})[0]
        asked = dict(zip(s.meta["labels"], [t.text for t in s.turns if t.role == "user"]))
        questions.add(asked["sky"])
        assert asked["tree"] == "What is tree in this image? Please output segmentation mask."
    assert questions == {"Please segment the sky.", "Segment the sky."}  # each form drawn, seeded
    with pytest.raises(ValueError, match=r"names \['grass'\].*classes: \['boat', 'car', 'sky', 'tree'\]"):
        SemanticSegDataset(data_dir=str(tmp_path), question_templates_by_class={"grass": forms})
    with pytest.raises(ValueError, match="lacks the {class_name} placeholder"):
        SemanticSegDataset(data_dir=str(tmp_path), question_templates_by_class={"sky": ["Segment the sky."]})


def test_semantic_seg_unknown_label_value_is_reported(tmp_path):
    _semantic_dir(tmp_path)
    (tmp_path / "classes.json").write_text(json.dumps(["sky", "tree"]))
    with pytest.raises(ValueError, match=r"class values \[2\]"):
        SemanticSegDataset(data_dir=str(tmp_path))[0]


def test_llava_json_conversations(tmp_path):
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tmp_path / "cat.png")
    records = [
        {"id": "a", "image": "cat.png", "conversations": [
            {"from": "human", "value": "<image>\nWhat colour is it?"}, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "Sure?"}, {"from": "gpt", "value": "Yes."}]},
        {"id": "b", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]},
        {"id": "c", "image": "cat.png", "conversations": [{"from": "human", "value": "No placeholder"},
                                                          {"from": "gpt", "value": "Ok."}]},
    ]
    (tmp_path / "data.json").write_text(json.dumps(records))
    ds = LlavaJsonDataset(data_path=str(tmp_path / "data.json"))
    a, b, c = ds[0], ds[1], ds[2]
    assert a.turns[0].text == "What colour is it?" and a.turns[0].images == 1 and len(a.images) == 1
    assert [t.role for t in a.turns] == ["user", "assistant", "user", "assistant"] and a.targets == {}
    assert b.images == [] and b.turns[0].images == 0
    assert c.turns[0].images == 1 and a.meta == {"dataset": "llava_json", "id": "a"}
    records.append({"id": "d", "conversations": [{"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "?"}]})
    (tmp_path / "data.json").write_text(json.dumps(records))
    with pytest.raises(ValueError, match="places 1 <image> but lists 0"):
        LlavaJsonDataset(data_path=str(tmp_path / "data.json"))[3]
    (tmp_path / "bad.json").write_text(json.dumps([{"id": 1, "conversations": [{"from": "robot", "value": "x"}]}]))
    with pytest.raises(ValueError, match="human\\|gpt"):
        LlavaJsonDataset(data_path=str(tmp_path / "bad.json"))


def test_open_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match="broken.png"):
        open_image(bad)
    with pytest.raises(FileNotFoundError, match="missing.png"):
        open_image(tmp_path / "missing.png")
    Image.new("RGB", (40, 30)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="above the limit"):
        open_image(tmp_path / "big.png", max_pixels=100)
    Image.new("L", (3, 2), 7).save(tmp_path / "grey.png")
    assert open_image(tmp_path / "grey.png").mode == "RGB"


def test_question_templates_do_not_double_articles():
    from omniplug.data import seg_common as sc

    assert sc.fill("Please segment the {sent}.", sent="the tree on the right") == "Please segment the tree on the right."
    assert sc.fill("What is {sent} in this image?", sent="the tree") == "What is the tree in this image?"
    assert sc.fill("Please segment the {part} of {whole}.", part="roof", whole="the house") == \
        "Please segment the roof of the house."

"""``omniplug tiny``'s det.yaml through the command line: train a few steps, box figures from ``omniplug eval``
(the config's refcoco boxes and a COCO detection folder), and boxes from ``omniplug infer --json``."""

from __future__ import annotations

import json

from PIL import Image


def test_det_yaml_trains_evaluates_and_answers_with_boxes(tiny_dir, tmp_path, capsys):
    from omniplug.cli import main

    config, shapes = str(tiny_dir / "det.yaml"), tiny_dir / "seg_data" / "shapes_refcoco"
    run = tmp_path / "run"
    assert main(["train", "-c", config, "trainer.iters_per_epoch=3", f"trainer.output_dir={run}"]) == 0
    capsys.readouterr()
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert "det/giou" in metrics[0] and metrics[-1].startswith("3,")  # logged every 5 steps and at the end

    assert main(["eval", "-c", config, "--json", "--max-samples", "3", "--max-new-tokens", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["shapes_boxes_val"]) == {"accuracy", "mean_iou", "no_box", "n"}
    assert report["shapes_boxes_val"]["n"] == 3
    assert main(["eval", "-c", config, "--json", "--max-samples", "4", "--max-new-tokens", "4", "--data", str(shapes),
                 "--data-type", "coco_detection"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert {"map", "ap50", "ap50_circle"} <= set(report["shapes_refcoco"])

    image = shapes / "images" / "val_0025.png"
    out = tmp_path / "out"
    assert main(["infer", "-c", config, "decoder.tiny_detr.score_threshold=0.0", "--image", str(image),
                 "--prompt", "Detect every circle.", "--answer-prefix", "Sure, <det>", "--max-new-tokens", "2",
                 "--out", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["boxes"] and {"box", "label", "score"} <= set(report["boxes"][0])
    assert all(b["label"] in ("circle", "square", "triangle") for b in report["boxes"])
    drawn, original = Image.open(out / "boxes.png").size, Image.open(image).size  # upscaled so labels can be read
    assert drawn[0] * original[1] == drawn[1] * original[0] and drawn[0] >= original[0]


def test_world_eval_scores_the_box_tasks_of_a_box_model(tiny_dir, tmp_path, capsys):
    """A model with a box decoder and no mask decoder gets the world's caption, VQA and box figures only."""
    from omniplug.cli import main

    assert main(["world", "generate", "--out", str(tmp_path / "val"), "--n", "4", "--seed", "5", "--split", "val"]) == 0
    capsys.readouterr()
    assert main(["eval", "-c", str(tiny_dir / "det.yaml"), "decoder.tiny_detr.score_threshold=0.2", "--world",
                 str(tmp_path / "val"), "--max-samples", "3", "--tasks", "detection,referring_box", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"detection", "referring_box"}
    assert 0.0 <= report["detection"]["ap50"] <= 1.0 and report["detection"]["n"] == 3
    assert 0.0 <= report["referring_box"]["accuracy"] <= 1.0 and report["referring_box"]["n"] == 3

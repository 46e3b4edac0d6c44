"""The samples-curve runs and the VQA breakdown of bench/default (their training and scoring are benchmarks,
recorded in bench/default/README.md): the shorter runs are the shipped recipe with only its length and curriculum
scaled, and every question the world asks falls into one of the breakdown's kinds."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from collections import Counter
from pathlib import Path

import pytest

from omniplug.config import load_config
from tests.test_default_model import _same_paths

REPO = Path(__file__).resolve().parents[1]


def _bench(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name, steps", [("quarter", 1250), ("half", 2500)])
def test_samples_curve_runs_are_the_shipped_recipe_at_a_scaled_length(name, steps):
    """quarter.yaml / half.yaml differ from the shipped config only in steps, output folder, checkpointing,
    validation and v14's batch of 16 (the samples curve's first points), with the curriculum's phase ends scaled the way bench/cuda/scale.py scales them (the H200 quarter
    run the CPU quarter run is compared with)."""
    scale = _bench("bench/cuda/scale.py", "scale")
    shipped = load_config(REPO / "configs" / "default" / "omni_tiny.yaml")
    run = load_config(REPO / "bench" / "default" / f"{name}.yaml")
    assert run.trainer == dataclasses.replace(shipped.trainer, iters_per_epoch=steps, output_dir=run.trainer.output_dir,
                                              save_every=run.trainer.save_every, eval_every=0, batch_size_train=16)
    ends = [round(e * steps / scale.RECIPE_STEPS) for e in scale.PHASE_ENDS]
    assert [phase["until_step"] for phase in run.data.schedule] == ends
    assert [phase["train"] for phase in run.data.schedule] == [phase["train"] for phase in shipped.data.schedule]
    assert run.data.train == shipped.data.train and run.data.max_length == shipped.data.max_length
    assert dataclasses.replace(run.one_model, weights=None) == dataclasses.replace(shipped.one_model, weights=None)
    for kind, entries in shipped.catalogues.items():
        for key, entry in entries.items():
            assert _same_paths(run.catalogues[kind][key].params) == _same_paths(entry.params), (kind, key)


def test_every_question_the_world_asks_has_a_vqa_kind(tmp_path):
    """vqa_types.py sorts the questions `omniplug eval` scores by kind; a question form the world adds without a
    kind there would be counted as 'other' and hide in the breakdown."""
    from omniplug.data.world.writers import write_split

    kinds = _bench("bench/default/vqa_types.py", "vqa_types")
    write_split(out_dir=tmp_path / "val", n=60, seed=5, split="val")
    records = json.loads((tmp_path / "val" / "llava.json").read_text())
    questions = [turn["value"] for rec in records for turn in rec["conversations"][2::2]]  # after the caption
    counted = Counter(kinds.kind_of(q) for q in questions)
    assert "other" not in counted, [q for q in questions if kinds.kind_of(q) == "other"][:5]
    assert set(counted) == {name for name, _ in kinds.KINDS}
    assert kinds.kind_of("Is the circle to the left of the star?") == "relation"
    assert kinds.kind_of("What colour is the square?") == "colour"

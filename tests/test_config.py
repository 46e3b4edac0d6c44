"""Config loading in the seed format: includes, interpolation, overrides, and loud failures."""

from __future__ import annotations

from pathlib import Path

import pytest

from omniplug.config import load_config
from omniplug.config.schema import ConfigError

REPO = Path(__file__).resolve().parents[1]

BASE = """
base_dir: /models
encoder:
  clip_encoder: {type: clip, model_name_or_path: "${base_dir}/clip", select_feature_layer: -2}
projector:
  proj: {type: linear, in_features: 1024, out_features: 4096}
tokenizer:
  tok: {type: hf, model_name_or_path: "${base_dir}/llama"}
llm:
  llava_7b: {type: hf_causal_lm, model_name_or_path: "${base_dir}/llava-7b", lora_enable: true, lora_r: 8}
  llava_13b: {type: hf_causal_lm, model_name_or_path: "${base_dir}/llava-13b"}
one_model:
  encoder: clip_encoder
  in_projector: proj
  tokenizer: tok
  llm: llava_7b
trainer: {init_lr: 1e-4, warmup_steps: 10}
"""


def test_interpolation_and_overrides(write_yaml):
    path = write_yaml(BASE)
    cfg = load_config(path, ["base_dir=/mnt", "one_model.llm=llava_13b", "trainer.init_lr=2e-5"])
    assert cfg.catalogues["encoder"]["clip_encoder"].params["model_name_or_path"] == "/mnt/clip"
    assert cfg.one_model.llm == "llava_13b"
    assert cfg.trainer.init_lr == pytest.approx(2e-5)
    assert cfg.resolved["llm"]["llava_13b"]["model_name_or_path"] == "/mnt/llava-13b"


def test_scientific_floats_without_dot(write_yaml):
    cfg = load_config(write_yaml(BASE))
    assert cfg.trainer.init_lr == pytest.approx(1e-4)


def test_includes_and_one_line_switch(tmp_path):
    (tmp_path / "modules").mkdir()
    (tmp_path / "modules" / "cat.yaml").write_text(BASE.split("one_model:")[0])
    (tmp_path / "model.yaml").write_text(
        "includes: [modules/cat.yaml]\none_model: {encoder: clip_encoder, in_projector: proj, tokenizer: tok, llm: llava_13b}\n"
    )
    cfg = load_config(tmp_path / "model.yaml")
    assert cfg.one_model.llm == "llava_13b"
    assert cfg.catalogues["llm"]["llava_13b"].source.endswith("cat.yaml")


def test_include_cycle_is_refused(tmp_path):
    (tmp_path / "a.yaml").write_text("includes: [b.yaml]\n")
    (tmp_path / "b.yaml").write_text("includes: [a.yaml]\n")
    with pytest.raises(ConfigError, match="include cycle"):
        load_config(tmp_path / "a.yaml")


def test_unknown_key_names_file_entry_key_and_accepted(write_yaml):
    path = write_yaml(BASE.replace("select_feature_layer: -2", "select_feature_layr: -2"))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "encoder.clip_encoder" in msg and "select_feature_layr" in msg
    assert "accepted keys" in msg and "select_feature_layer" in msg and "did you mean" in msg


SCHEDULE = BASE + """
dataset:
  cap: {type: world, root: /data/world, task: caption_vqa}
  seg: {type: world, root: /data/world, task: referring}
data:
  train: {cap: 1, seg: 2}
  schedule: SCHEDULE_HERE
"""


def test_curriculum_schedule_is_checked(write_yaml):
    good = "[{until_step: 100, train: {cap: 1}}, {until_step: 300, train: {cap: 1, seg: 1}}]"
    cfg = load_config(write_yaml(SCHEDULE.replace("SCHEDULE_HERE", good)))
    assert [p["until_step"] for p in cfg.data.schedule] == [100, 300]
    bad = {
        "[{until_step: 100, train: {capt: 1}}]": "data.schedule\\[0\\].train: unknown dataset entry 'capt'",
        "[{until_step: 100, train: {cap: 1}}, {until_step: 50, train: {seg: 1}}]": "until_step must be an integer > 100",
        "[{until: 100, train: {cap: 1}}]": "must be \\{until_step: N",
        "[{until_step: 100, train: {cap: 0}}]": "positive sum",
        "[{until_step: 100, train: {cap: -1, seg: 2}}]": "ratio must be a number >= 0",
    }
    for schedule, message in bad.items():
        with pytest.raises(ConfigError, match=message):
            load_config(write_yaml(SCHEDULE.replace("SCHEDULE_HERE", schedule)))


def test_unknown_entry_name(write_yaml):
    with pytest.raises(ConfigError, match="unknown llm entry 'llava_8b'.*available llm entries: llava_13b, llava_7b"):
        load_config(write_yaml(BASE), ["one_model.llm=llava_8b"])


def test_unknown_alias_lists_available(write_yaml):
    with pytest.raises(ConfigError, match="unknown encoder 'clipp'; available: cells, clip, llava_vision, state"):
        load_config(write_yaml(BASE.replace("type: clip,", "type: clipp,")))


def test_wrong_type(write_yaml):
    with pytest.raises(ConfigError, match="lora_r' must be int, got str"):
        load_config(write_yaml(BASE.replace("lora_r: 8", "lora_r: eight")))
    with pytest.raises(ConfigError, match="trainer: key 'warmup_steps' must be int"):
        load_config(write_yaml(BASE), ["trainer.warmup_steps=1.5"])


def test_unknown_top_level_and_section_keys(write_yaml):
    with pytest.raises(ConfigError, match="unknown top-level key 'traner'"):
        load_config(write_yaml(BASE + "traner: {}\n"))
    with pytest.raises(ConfigError, match="trainer: unknown key 'init_rl'"):
        load_config(write_yaml(BASE), ["trainer.init_rl=1"])


def test_python_tags_are_refused_and_not_executed(write_yaml, tmp_path):
    marker = tmp_path / "pwned"
    evil = BASE + f"name: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="python object tags"):
        load_config(write_yaml(evil))
    assert not marker.exists()


def test_missing_interpolation_is_explained(write_yaml):
    with pytest.raises(ConfigError, match="cannot resolve interpolation"):
        load_config(write_yaml(BASE.replace("base_dir: /models\n", "")))


def test_resolved_config_saved(write_yaml, tmp_path):
    cfg = load_config(write_yaml(BASE), ["base_dir=/x"])
    out = cfg.save(tmp_path / "run" / "config.yaml")
    again = load_config(out)
    assert again.resolved == cfg.resolved


SHIPPED = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "configs").rglob("*.yaml")
                 if p.parent.name not in ("modules", "accelerate"))  # accelerate/: launcher configs, not omniplug's


@pytest.mark.parametrize("path", SHIPPED)
def test_every_shipped_config_validates(path):
    """Model/experiment files (module catalogues are checked through them) load and validate offline."""
    load_config(REPO / path, ["base_dir=/nonexistent"])

"""The training loop on the tiny Llama + a test decoder: exact resume, non-finite skip, learning,
outputs, evaluation-only mode."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from omniplug.config import load_config
from omniplug.train import NonFiniteLossError, train
from omniplug.train import checkpoint as ckpt
from tests.test_train_plugins import write_config


def _rows(out):
    with open(out / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def _without_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def _weights(path):
    return load_file(str(path / "trainable.safetensors"))


def test_resume_after_a_kill_mid_epoch_is_bit_identical(tiny_dir, tmp_path):
    # 2 epochs x 4 steps, 2 micro-batches per step, LoRA dropout on: data order, optimizer state and
    # every generator must be restored for the losses to match bit for bit.
    common = ["trainer.grad_accum_steps=2", "trainer.save_every=3", "trainer.keep_last_checkpoints=5"]
    full_out, cut_out = tmp_path / "full", tmp_path / "cut"
    path = write_config(tiny_dir, tmp_path, out=full_out)
    train(load_config(path, common))

    path = write_config(tiny_dir, tmp_path, out=cut_out)
    train(load_config(path, common), stop_after_steps=5)  # "killed" after step 5; last checkpoint: step 3
    assert len(_rows(cut_out)) == 5
    # a newer checkpoint whose write was interrupted (no COMPLETE marker) must be ignored
    broken = ckpt.checkpoints_dir(cut_out) / "step_000005"
    shutil.copytree(ckpt.checkpoints_dir(cut_out) / "step_000003", broken)
    (broken / ckpt.MARKER).unlink()
    (broken / "trainable.safetensors").write_bytes(b"half-written")

    result = train(load_config(path, [*common, "trainer.resume_ckpt_path=auto"]))
    assert result.steps == 8 and result.steps_this_run == 5  # resumed from step 3, not the broken step 5

    full, resumed = _without_time(_rows(full_out)), _without_time(_rows(cut_out))
    assert [r["step"] for r in resumed] == [str(i) for i in range(1, 9)]
    assert resumed == full  # loss, every loss term, lr and grad norm: identical strings (repr of the floats)
    a, b = _weights(full_out), _weights(cut_out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not broken.exists() or not ckpt.is_complete(broken)


def test_a_non_finite_loss_skips_the_step_and_leaves_weights_alone(tiny_dir, tmp_path):
    # every batch has a <tst>, so decoder loss call n is step n; call 2 is NaN
    overrides = ["trainer.save_every=1", "trainer.keep_last_checkpoints=20", "trainer.max_epoch=1", "data.train.phrase=0"]
    out = tmp_path / "out"
    path = write_config(tiny_dir, tmp_path, out=out, nan_on_calls=[2])
    result = train(load_config(path, overrides))
    rows = _rows(out)
    assert [r["skipped"] for r in rows] == ["0", "1", "0", "0"] and result.skipped == 1 and result.steps == 4
    assert rows[1]["loss"] == "nan" and all(r["loss"] != "nan" for r in rows[2:])  # training went on
    # no checkpoint while the loss is non-finite; the optimizer took 3 steps in 4, not 4
    saved = {p.name: ckpt.load_optimizer_state(p) for p in ckpt.complete_checkpoints(out)}
    assert list(saved) == ["step_000001", "step_000003", "step_000004"]
    adam_steps = {name: {float(s["step"]) for s in opt["state"].values()} for name, opt in saved.items()}
    assert adam_steps == {"step_000001": {1.0}, "step_000003": {2.0}, "step_000004": {3.0}}
    assert ckpt.load_state(out / "checkpoints" / "step_000004").skipped == 1

    # stopping right after the skipped step: the weights are those of step 1
    cut = tmp_path / "cut"
    path = write_config(tiny_dir, tmp_path, out=cut, nan_on_calls=[2])
    result = train(load_config(path, overrides), stop_after_steps=2)
    step1 = _weights(ckpt.checkpoints_dir(cut) / "step_000001")
    now = {k: v for k, v in result.model.named_parameters() if v.requires_grad}
    assert now.keys() == step1.keys() and all(torch.equal(now[k].detach(), step1[k]) for k in now)
    assert all(p.grad is None for p in now.values())  # gradients of the skipped step were dropped


def test_too_many_non_finite_steps_in_a_row_stop_with_the_last_good_checkpoint(tiny_dir, tmp_path):
    out = tmp_path / "out"
    path = write_config(tiny_dir, tmp_path, out=out, nan_on_calls=list(range(3, 50)))
    overrides = ["trainer.save_every=1", "trainer.max_nonfinite_in_row=3", "data.train.phrase=0"]  # every batch has <tst>
    with pytest.raises(NonFiniteLossError, match="non-finite for 3 steps in a row") as info:
        train(load_config(path, overrides))
    assert "step_000002" in str(info.value)
    rows = _rows(out)
    assert [r["skipped"] for r in rows] == ["0", "0", "1", "1", "1"]
    newest = ckpt.resolve_resume("auto", out)
    assert newest.name == "step_000002" and ckpt.load_state(newest).step == 2
    assert ckpt.complete_checkpoints(out)[-1] == newest


def test_loss_falls_and_outputs_are_written(tiny_dir, tmp_path):
    from omniplug.cli import main

    out = tmp_path / "out"
    path = write_config(tiny_dir, tmp_path, out=out)
    overrides = ["one_model.train_mode=2", "trainer.lr_sched=constant", "trainer.init_lr=0.01", "trainer.warmup_steps=0",
                 "trainer.max_epoch=1", "trainer.iters_per_epoch=25", "data.train.phrase_tst=0",
                 "data.eval=[phrase_val]", "trainer.batch_size_eval=5"]
    assert main(["train", "-c", str(path), *overrides]) == 0
    rows = _rows(out)
    losses = [float(r["loss"]) for r in rows]
    assert len(rows) == 25 and losses[-1] < 0.3 * losses[0], losses
    header = rows[0].keys()
    assert {"step", "epoch", "lr", "loss", "lm_loss", "grad_norm", "skipped", "seconds"} <= set(header)
    png = out / "loss_curve.png"
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "trainable.safetensors").is_file() and (out / "config.yaml").is_file()
    rank = json.loads((out / "ranks" / "rank0.json").read_text())
    assert rank["world_size"] == 1 and rank["steps"] == 25
    epoch_eval = [json.loads(line) for line in (out / "eval_metrics.jsonl").read_text().splitlines()]
    assert epoch_eval[0]["dataset"] == "phrase_val" and epoch_eval[0]["samples"] == 5

    # evaluation only: the newest checkpoint on data.eval
    assert main(["train", "-c", str(path), *overrides, "trainer.evaluate=true", "trainer.resume_ckpt_path=auto"]) == 0
    results = json.loads((out / "eval_results.json").read_text())
    assert results["weights"].endswith("step_000025")
    assert results["results"]["phrase_val"]["loss"] == pytest.approx(epoch_eval[0]["loss"], rel=1e-5)


def test_a_curriculum_trains_its_phases_in_order_and_resumes_across_them(tiny_dir, tmp_path):
    # steps 1-3: text only (no decoder loss); then the scalar task only; a resumed run crosses the switch exactly
    schedule = ["data.train={phrase: 0, phrase_tst: 1}", "data.schedule=[{until_step: 3, train: {phrase: 1}}]"]
    full_out, cut_out = tmp_path / "full", tmp_path / "cut"
    train(load_config(write_config(tiny_dir, tmp_path, out=full_out), schedule))
    rows = _rows(full_out)
    assert [bool(r.get("tst/mse")) for r in rows] == [False] * 3 + [True] * 5, rows
    path = write_config(tiny_dir, tmp_path, out=cut_out)
    train(load_config(path, [*schedule, "trainer.save_every=2"]), stop_after_steps=3)
    train(load_config(path, [*schedule, "trainer.save_every=2", "trainer.resume_ckpt_path=auto"]))
    assert _without_time(_rows(cut_out)) == _without_time(rows)


def test_length_grouped_batches_train_and_resume_exactly(tiny_dir, tmp_path):
    # two datasets of different lengths, windows of 3 batches sorted by length; a run cut at step 3 and resumed
    # from its step-2 checkpoint (mid-window) logs exactly what the uninterrupted run logs
    grouped = ["data.train={phrase: 1, phrase_tst: 1}", "trainer.length_group_window=3"]
    full_out, cut_out = tmp_path / "full", tmp_path / "cut"
    train(load_config(write_config(tiny_dir, tmp_path, out=full_out), grouped))
    path = write_config(tiny_dir, tmp_path, out=cut_out)
    train(load_config(path, [*grouped, "trainer.save_every=2"]), stop_after_steps=3)
    train(load_config(path, [*grouped, "trainer.save_every=2", "trainer.resume_ckpt_path=auto"]))
    assert _without_time(_rows(cut_out)) == _without_time(_rows(full_out))
    plain_out = tmp_path / "plain"
    train(load_config(write_config(tiny_dir, tmp_path, out=plain_out), grouped[:1]))
    assert [r["loss"] for r in _rows(plain_out)] != [r["loss"] for r in _rows(full_out)]  # other batches
    with pytest.raises(Exception, match="length_group_window must be >= 0"):
        train(load_config(path, [*grouped, "trainer.length_group_window=-1"]))


def test_validation_every_n_steps_keeps_resume_exact(tiny_dir, tmp_path):
    # data.eval runs at steps 3 and 6 (trainer.eval_every) besides the epoch ends (4, 8); a run cut at step 3
    # (after its validation, before a checkpoint) and resumed from step 2 logs the same losses and validations
    # as the uncut one, each validation once
    common = ["data.eval=[phrase_val]", "trainer.eval_every=3", "trainer.save_every=2", "trainer.batch_size_eval=5"]
    full_out, cut_out = tmp_path / "full", tmp_path / "cut"
    train(load_config(write_config(tiny_dir, tmp_path, out=full_out), common))
    evals = [json.loads(line) for line in (full_out / "eval_metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 4, 6, 8] and all(e["dataset"] == "phrase_val" for e in evals)
    assert all("tst/mse" in e for e in evals)
    path = write_config(tiny_dir, tmp_path, out=cut_out)
    train(load_config(path, common), stop_after_steps=3)
    assert [json.loads(line)["step"] for line in (cut_out / "eval_metrics.jsonl").read_text().splitlines()] == [3]
    train(load_config(path, [*common, "trainer.resume_ckpt_path=auto"]))
    assert _without_time(_rows(cut_out)) == _without_time(_rows(full_out))
    resumed = [json.loads(line) for line in (cut_out / "eval_metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in resumed] == [3, 4, 6, 8]
    assert resumed[-1] == evals[-1]


@pytest.mark.parametrize("overrides, message", [
    (["trainer.eval_every=5"], "data.eval names no dataset"),
    (["data.eval=[phrase_val]", "trainer.eval_every=-1"], "eval_every must be >= 0"),
])
def test_bad_validation_schedules_are_refused(tiny_dir, tmp_path, overrides, message):
    from omniplug.config.schema import ConfigError

    path = write_config(tiny_dir, tmp_path, out=tmp_path / "out")
    with pytest.raises(ConfigError, match=message):
        train(load_config(path, overrides))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tiny_dir, tmp_path):
    """trainer.gradient_checkpointing recomputes the LLM's blocks in backward: same numbers, fewer activations
    kept (the memory figures are in bench/train/memory.json)."""
    from omniplug.build import build_model
    from omniplug.data.collate import Collator
    from tests.test_train_plugins import PhraseDataset

    path = write_config(tiny_dir, tmp_path, out=tmp_path / "out")
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = build_model(load_config(path, overrides=["llm.tiny_llama.lora_dropout=0.0"]))
        if checkpointing:
            model.llm.enable_gradient_checkpointing()
        model.train()
        assert model.llm.model.is_gradient_checkpointing == checkpointing
        data = PhraseDataset(size=4, trigger=True)
        out = model(Collator(model, max_length=64)([data[i] for i in range(4)]))
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        assert any("lora_" in n for n in grads) and all(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" in n)
        results.append((out.loss.item(), grads))
    (loss_off, grads_off), (loss_on, grads_on) = results
    assert loss_on == pytest.approx(loss_off, abs=1e-6)
    assert grads_on.keys() == grads_off.keys()
    for name in grads_off:
        assert torch.allclose(grads_on[name], grads_off[name], atol=1e-6), name

    result = train(load_config(path, overrides=["trainer.gradient_checkpointing=true", "trainer.max_epoch=1"]))
    assert result.steps == 4 and result.last_loss is not None and result.model.llm.model.is_gradient_checkpointing


def test_a_missed_validation_floor_stops_the_run_loudly_with_its_checkpoint(tiny_dir, tmp_path):
    # trainer.expect: a floor the validation cannot reach ends the run at the first validation at or after
    # by_step (here step 4 of 8), checkpoint written; a reachable floor lets the run finish
    from omniplug.train import ExpectationError

    common = ["data.eval=[phrase_val]", "trainer.eval_every=2", "trainer.save_every=3", "trainer.batch_size_eval=5"]
    path = write_config(tiny_dir, tmp_path, out=tmp_path / "stopped")
    with pytest.raises(ExpectationError, match=r"step 4: .*phrase_val/loss=\d+\.\d+ > 1e-09 \(by step 3\)"):
        train(load_config(path, [*common, 'trainer.expect={"phrase_val/loss": {max: 1.0e-9, by_step: 3}}']))
    out = tmp_path / "stopped"
    assert [json.loads(line)["step"] for line in (out / "eval_metrics.jsonl").read_text().splitlines()] == [2, 4]
    assert (out / "checkpoints" / "step_000004").is_dir() and not (out / "trainable.safetensors").exists()

    path = write_config(tiny_dir, tmp_path, out=tmp_path / "finished")
    result = train(load_config(path, [*common, 'trainer.expect={"phrase_val/loss": {max: 1.0e6}, '
                                               '"phrase_val/tst/mse": {min: 0.0, by_step: 2}}']))
    assert result.steps == 8 and (tmp_path / "finished" / "trainable.safetensors").is_file()


@pytest.mark.parametrize("expect, message", [
    ('{"phrase_train/loss": {max: 1.0}}', "must be '<data.eval entry>/<metric>'"),
    ('{"phrase_val/loss": {by_step: 3}}', "with min and/or max"),
    ('{"phrase_val/loss": {max: 1.0, after: 3}}', "with min and/or max"),
    ('{"phrase_val/seg/ciou": {min: 0.5}}', "reports no 'seg/ciou'; its validation reports .*lm_loss"),
])
def test_bad_validation_floors_are_refused(tiny_dir, tmp_path, expect, message):
    from omniplug.config.schema import ConfigError

    path = write_config(tiny_dir, tmp_path, out=tmp_path / "out")
    with pytest.raises(ConfigError, match=message):
        train(load_config(path, ["data.eval=[phrase_val]", "trainer.eval_every=2", f"trainer.expect={expect}"]))


def test_inherited_validation_floors_are_dropped_with_null():
    """The bundled config holds a semantic floor (trainer.expect); a run without validation (data.eval=[], as
    bench/cuda/scale.py makes) is refused while the floor stands, and trainer.expect=null drops it."""
    from pathlib import Path

    from omniplug.config.schema import ConfigError
    from omniplug.train.loop import _check_trainer as validate_config

    shipped = Path(__file__).resolve().parents[1] / "configs" / "default" / "omni_tiny.yaml"
    assert "semantic_val/seg/ciou" in load_config(shipped).trainer.expect
    with pytest.raises(ConfigError, match="trainer.expect=null drops"):
        validate_config(load_config(shipped, ["data.eval=[]", "trainer.eval_every=0"]))
    config = load_config(shipped, ["data.eval=[]", "trainer.eval_every=0", "trainer.expect=null"])
    validate_config(config)
    assert config.trainer.expect == {}

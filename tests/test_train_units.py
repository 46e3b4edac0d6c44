"""Training pieces without a model: schedules, dataset mixing, rank sharding, checkpoint files."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from omniplug.config import TrainerConfig
from omniplug.train import checkpoint as ckpt
from omniplug.train.mixing import MixtureStream, RankBatches
from omniplug.train.schedulers import make_schedule


def _schedule(**kw):
    base = dict(init_lr=1e-3, min_lr=1e-5, warmup_lr=1e-6, warmup_steps=10, max_epoch=4, iters_per_epoch=25,
                lr_decay_rate=0.5)
    return make_schedule(TrainerConfig(**{**base, **kw}))


def test_warmup_then_cosine_reaches_min_lr_at_the_last_step():
    s = _schedule(lr_sched="linear_warmup_cosine_lr")
    assert s.lr(0) == pytest.approx(1e-6)
    assert s.lr(5) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.5)
    assert s.lr(10) == pytest.approx(1e-3)  # warmup done: cosine starts at init_lr
    mid = 10 + (100 - 10) // 2
    assert s.lr(mid) == pytest.approx(1e-5 + (1e-3 - 1e-5) * 0.5)
    assert s.lr(100) == pytest.approx(1e-5)
    assert s.lr(1000) == pytest.approx(1e-5)  # never below min_lr
    lrs = [s.lr(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_step_schedule_decays_per_epoch_and_constant_stays():
    s = _schedule(lr_sched="linear_warmup_step_lr")
    assert s.lr(3) == pytest.approx(1e-6 + (1e-3 - 1e-6) * 0.3)
    assert s.lr(24) == pytest.approx(1e-3)  # epoch 0 after warmup
    assert s.lr(25) == pytest.approx(5e-4)  # epoch 1
    assert s.lr(75) == pytest.approx(1.25e-4)  # epoch 3
    assert _schedule(lr_sched="linear_warmup_step_lr", lr_decay_rate=0.001).lr(60) == pytest.approx(1e-5)  # floor
    c = _schedule(lr_sched="constant", warmup_steps=0)
    assert {c.lr(i) for i in (0, 50, 99)} == {1e-3}


def test_mixing_follows_the_ratios_and_cycles_through_items():
    # LISA's sem_seg : refer_seg : vqa : reason_seg = 9 : 3 : 3 : 1
    stream = MixtureStream(sizes=[50, 20, 30, 7], ratios=[9, 3, 3, 1], seed=3)
    draws = list(_take(stream.iterate(0), 32000))
    counts = np.bincount([d for d, _ in draws], minlength=4) / len(draws)
    assert np.allclose(counts, np.array([9, 3, 3, 1]) / 16, atol=0.01), counts
    first_pass = [i for d, i in draws if d == 3][:7]
    assert sorted(first_pass) == list(range(7))  # every item once per pass over a dataset
    # same seed -> same stream; another seed -> another one; resuming mid-stream continues it exactly
    assert list(_take(MixtureStream(sizes=[50, 20, 30, 7], ratios=[9, 3, 3, 1], seed=3).iterate(0), 100)) == draws[:100]
    assert list(_take(MixtureStream(sizes=[50, 20, 30, 7], ratios=[9, 3, 3, 1], seed=4).iterate(0), 100)) != draws[:100]
    assert list(_take(stream.iterate(20000), 50)) == draws[20000:20050]


def test_ranks_split_the_single_process_stream():
    stream = MixtureStream(sizes=[5, 8], ratios=[1, 2], seed=0)
    single = list(_take(iter(RankBatches(stream, start=6, batch_size=3, rank=0, world_size=1)), 8))
    r0 = list(_take(iter(RankBatches(stream, start=6, batch_size=3, rank=0, world_size=2)), 4))
    r1 = list(_take(iter(RankBatches(stream, start=6, batch_size=3, rank=1, world_size=2)), 4))
    assert [b for pair in zip(r0, r1) for b in pair] == single
    assert r0 != r1


def test_length_grouping_reorders_each_window_and_resumes_exactly():
    stream = MixtureStream(sizes=[50, 20, 30, 7], ratios=[9, 3, 3, 1], seed=3)
    lengths = [150.0, 25.0, 110.0, 90.0]  # typical tokens per dataset: captions long, drawing prompts short

    def batches(start, n, **kw):
        return list(_take(iter(RankBatches(stream, start=start, batch_size=4, rank=0, world_size=1, **kw)), n))

    plain, grouped = batches(0, 24), batches(0, 24, group_window=8, lengths=lengths)
    for w in range(3):  # every window of 8 batches holds the same draws, only in other batches
        assert sorted(k for b in plain[8 * w:8 * w + 8] for k in b) == sorted(k for b in grouped[8 * w:8 * w + 8] for k in b)
    spread = lambda bs: np.mean([np.ptp([lengths[d] for d, _ in b]) for b in bs])  # noqa: E731
    assert spread(grouped) < 0.5 * spread(plain)  # a batch's sequences have similar lengths
    assert grouped != sorted(grouped, key=lambda b: [lengths[d] for d, _ in b])  # not all short batches first
    # a resumed run (mid-window, at a batch boundary) gets the same batches; two ranks split them
    assert batches(12, 12, group_window=8, lengths=lengths) == grouped[3:15]
    r0 = list(_take(iter(RankBatches(stream, start=0, batch_size=2, rank=0, world_size=2, group_window=8, lengths=lengths)), 24))
    r1 = list(_take(iter(RankBatches(stream, start=0, batch_size=2, rank=1, world_size=2, group_window=8, lengths=lengths)), 24))
    assert [a + b for a, b in zip(r0, r1)] == grouped
    with pytest.raises(ValueError, match="batch boundary"):
        batches(6, 1, group_window=8, lengths=lengths)
    with pytest.raises(ValueError, match="one typical length per dataset"):
        RankBatches(stream, start=0, batch_size=4, rank=0, world_size=1, group_window=8, lengths=[1.0])


def test_single_mixture_stream_is_unchanged_by_the_curriculum_code():
    # pinned: the draws a plain mixture made before curricula existed (numpy Generator.choice with p)
    probs = np.array([9, 3, 3, 1]) / 16
    old = np.random.default_rng([3, 0, 0]).choice(4, size=2000, p=probs)
    assert MixtureStream(sizes=[50, 20, 30, 7], ratios=[9, 3, 3, 1], seed=3).choices(0)[:2000].tolist() == old.tolist()


def test_curriculum_phases_switch_mixtures_at_their_positions_and_resume_exactly():
    # captions only for 1,000 draws, then captions + masks 1:1 until 30,000, then masks only
    stream = MixtureStream(sizes=[40, 25], ratios=[0, 1], seed=7, phases=[(1000, [1, 0]), (30000, [1, 1])])
    draws = list(_take(stream.iterate(0), 33000))
    datasets = np.array([d for d, _ in draws])
    assert set(datasets[:1000]) == {0}
    assert abs(datasets[1000:30000].mean() - 0.5) < 0.02  # crosses the 16,384-draw block boundary
    assert set(datasets[30000:]) == {1}
    assert sorted(i for d, i in draws[:40]) == list(range(40))  # items still cycle through their permutation
    for start in (999, 1000, 16383, 16385, 29999):
        assert list(_take(stream.iterate(start), 40)) == draws[start:start + 40]
    with pytest.raises(ValueError, match="increase"):
        MixtureStream(sizes=[3, 3], ratios=[1, 1], seed=0, phases=[(10, [1, 0]), (10, [0, 1])])
    with pytest.raises(ValueError, match="ratios"):
        MixtureStream(sizes=[3, 3], ratios=[1, 1], seed=0, phases=[(10, [0, 0])])


def test_bad_ratios_are_refused():
    with pytest.raises(ValueError, match="ratios"):
        MixtureStream(sizes=[3, 3], ratios=[0, 0], seed=0)
    with pytest.raises(ValueError, match="at least one item"):
        MixtureStream(sizes=[3, 0], ratios=[1, 1], seed=0)


def test_rng_state_round_trips_through_weights_only_load(tmp_path):
    writer = ckpt.CheckpointWriter(tmp_path, 5)
    writer.begin()
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    writer.write_rank(0)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(2), np.random.seed(2), torch.manual_seed(2)
    assert ckpt.load_rng(writer.tmp, 0)  # torch.load(weights_only=True) inside
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    assert not ckpt.load_rng(writer.tmp, 1)


def test_auto_resume_ignores_incomplete_checkpoints(tmp_path):
    root = ckpt.checkpoints_dir(tmp_path)
    for step, complete in ((2, True), (4, True), (6, False)):
        d = root / ckpt.step_dir_name(step)
        d.mkdir(parents=True)
        if complete:
            (d / ckpt.MARKER).write_text("{}")
    (root / ".tmp_step_000008").mkdir()
    assert ckpt.resolve_resume("auto", tmp_path) == root / "step_000004"
    assert ckpt.resolve_resume(None, tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path / "elsewhere") is None
    with pytest.raises(ValueError, match="no COMPLETE marker"):
        ckpt.resolve_resume(str(root / "step_000006"), tmp_path)
    ckpt.prune(tmp_path, keep_last=1)
    assert [p.name for p in ckpt.complete_checkpoints(tmp_path)] == ["step_000004"]
    assert sorted(p.name for p in root.iterdir()) == ["step_000004", "step_000006"]  # incomplete: kept, never loaded


def _take(iterator, n):
    for _ in range(n):
        yield next(iterator)


def test_schedule_values_are_finite_everywhere():
    for name in ("linear_warmup_cosine_lr", "linear_warmup_step_lr", "constant"):
        s = _schedule(lr_sched=name, warmup_steps=0)
        assert all(math.isfinite(s.lr(i)) and s.lr(i) > 0 for i in range(0, 120))

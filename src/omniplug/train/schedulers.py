"""Learning-rate schedules (``trainer.lr_sched``): pure functions of the optimizer step.

The seed's names and LAVIS-style semantics, made per step so a resumed run gets the same rate:

* warmup (every schedule, when ``warmup_steps > 0``): linear from ``warmup_lr`` at step 0 to
  ``init_lr`` at step ``warmup_steps``;
* ``linear_warmup_cosine_lr``: then cosine from ``init_lr`` down to ``min_lr`` at the last step;
* ``linear_warmup_step_lr``: then ``max(min_lr, init_lr * lr_decay_rate ** epoch)``;
* ``constant``: then ``init_lr``.

A schedule holds no state besides its settings: the trainer's step counter is the state, so a
checkpoint stores the step and nothing else is needed to continue the curve exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from omniplug.config import TrainerConfig


@dataclass(frozen=True)
class Schedule:
    name: str
    init_lr: float
    min_lr: float
    warmup_lr: float
    warmup_steps: int
    total_steps: int
    iters_per_epoch: int
    decay_rate: float

    def lr(self, step: int) -> float:
        """Learning rate for optimizer step ``step`` (0-based: the rate of the first update is ``lr(0)``)."""
        if step < self.warmup_steps:
            return self.warmup_lr + (self.init_lr - self.warmup_lr) * step / self.warmup_steps
        if self.name == "constant":
            return self.init_lr
        if self.name == "linear_warmup_step_lr":
            epoch = step // self.iters_per_epoch
            return max(self.min_lr, self.init_lr * self.decay_rate ** epoch)
        if self.name == "linear_warmup_cosine_lr":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return self.min_lr + (self.init_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
        raise ValueError(f"unknown lr_sched {self.name!r}; available: {', '.join(SCHEDULES)}")


SCHEDULES = ("linear_warmup_cosine_lr", "linear_warmup_step_lr", "constant")


def make_schedule(trainer: TrainerConfig) -> Schedule:
    if trainer.lr_sched not in SCHEDULES:
        raise ValueError(f"trainer.lr_sched: unknown schedule {trainer.lr_sched!r}; available: {', '.join(SCHEDULES)}")
    if trainer.warmup_steps < 0 or trainer.iters_per_epoch < 1 or trainer.max_epoch < 1:
        raise ValueError("trainer: warmup_steps must be >= 0, iters_per_epoch and max_epoch >= 1")
    return Schedule(name=trainer.lr_sched, init_lr=trainer.init_lr, min_lr=trainer.min_lr, warmup_lr=trainer.warmup_lr,
                    warmup_steps=trainer.warmup_steps, total_steps=trainer.max_epoch * trainer.iters_per_epoch,
                    iters_per_epoch=trainer.iters_per_epoch, decay_rate=trainer.lr_decay_rate)

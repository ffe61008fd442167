"""Learning-rate schedules with restarts for ReMoRA / ReLoRA, as real ``torch.optim.lr_scheduler.LRScheduler``s.

Every schedule is a pure function of the optimizer step ``s`` (0-based: the ``s``-th optimizer update uses
``base_lr · factor(s)``). The scheduler object holds only numbers, so ``state_dict()`` / ``load_state_dict()``
round-trip through ``torch.save`` and a resumed run continues on exactly the same curve; nothing patches a closure.

Notation: ``T`` total optimizer steps, ``W`` first warmup steps, ``N`` steps between merges (restarts),
``R`` re-warmup steps after a restart, ``ρ`` = ``min_lr_ratio``.

Official ReMoRA (``schedule="official"``)::

    before the first merge:   f(s) = s / W                                   for s < W
                              f(s) = ½ (1 + cos(π (s − W) / (T − W)))        for s ≥ W
    merge at step m (m = N, 2N, … < T), with f_m = the previous segment's value at m (the LR "at the merge"):
                              f(s) = f_m · (s − m) / R                       for m ≤ s < m + R   (0 at s = m)
                              f(s) = f_m · ½ (1 + cos(π (s − m − R) / (T − m − R)))   for s ≥ m + R

ReLoRA (``schedule="cosine_restarts"``), envelope ``e(s) = ρ + (1 − ρ) · ½ (1 + cos(π (s − W) / (T − W)))``::

    f(s) = s / W                              for s < W
    f(s) = (s − kN) / R · e(kN + R)           for kN ≤ s < kN + R, k ≥ 1   (linear re-warmup to the envelope)
    f(s) = e(s)                               otherwise
    T must be a multiple of N.
"""
from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

SCHEDULE_NAMES = ("official", "cosine_restarts")


class ScheduleConfigError(ValueError):
    """A schedule that cannot be built from the given numbers (one-line message naming the value)."""


def _check_common(num_training_steps: int, warmup_steps: int, merge_every: int, restart_warmup: int) -> None:
    if num_training_steps < 1:
        raise ScheduleConfigError(f"num_training_steps={num_training_steps} must be >= 1")
    if not 0 <= warmup_steps < num_training_steps:
        raise ScheduleConfigError(
            f"warmup_steps={warmup_steps} must be in [0, num_training_steps={num_training_steps})")
    if merge_every < 1:
        raise ScheduleConfigError(f"merge_every={merge_every} must be >= 1")
    if not 1 <= restart_warmup < merge_every:
        raise ScheduleConfigError(
            f"restart_warmup={restart_warmup} must be in [1, merge_every={merge_every}) so the re-warmup ends "
            "before the next merge")


def _cosine(progress: float) -> float:
    """½ (1 + cos(π · progress)), progress clipped to [0, 1]."""
    return 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def official_restart_factor(step: int, *, num_training_steps: int, warmup_steps: int, merge_every: int,
                            restart_warmup: int) -> float:
    """LR multiplier of the official ReMoRA schedule at optimizer step ``step`` (see the module docstring)."""
    T, W, N, R = num_training_steps, warmup_steps, merge_every, restart_warmup
    if step < W:
        return step / max(1, W)
    # Segment 0: the plain cosine after the warmup. Walk the merges up to ``step``; each one starts a new segment
    # whose peak is the previous segment's value at the merge step.
    peak, start, rewarm = 1.0, W, 0  # current segment: rises over [start, start+rewarm) then cosine to 0 at T
    merge = N
    while merge <= step and merge < T:
        peak = _segment_value(merge, peak, start, rewarm, T)
        start, rewarm = merge, R
        merge += N
    return _segment_value(step, peak, start, rewarm, T)


def _segment_value(step: int, peak: float, start: int, rewarm: int, total: int) -> float:
    if step < start + rewarm:
        return peak * (step - start) / rewarm
    return peak * _cosine((step - start - rewarm) / max(1, total - start - rewarm))


def cosine_restarts_factor(step: int, *, num_training_steps: int, warmup_steps: int, merge_every: int,
                           restart_warmup: int, min_lr_ratio: float) -> float:
    """LR multiplier of ReLoRA's cosine schedule with restarts at optimizer step ``step`` (module docstring)."""
    T, W, N, R, rho = num_training_steps, warmup_steps, merge_every, restart_warmup, min_lr_ratio

    def envelope(s: int) -> float:
        return rho + (1.0 - rho) * _cosine((s - W) / max(1, T - W))

    if step < W:
        return step / max(1, W)
    k, into = divmod(step, N)
    if k >= 1 and into < R:
        return into / R * envelope(k * N + R)
    return envelope(step)


class _FactorScheduler(LRScheduler):
    """LR = base_lr · factor(last_epoch) for every param group; state = plain numbers (picklable)."""

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base_lr * f for base_lr in self.base_lrs]

    def _get_closed_form_lr(self) -> list[float]:
        return self.get_lr()

    def load_state_dict(self, state_dict) -> None:
        """Restore the step and put the optimizer's LR where the schedule says (also without its state)."""
        super().load_state_dict(state_dict)
        lrs = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self._last_lr = lrs


class OfficialRestartScheduler(_FactorScheduler):
    """The official ReMoRA schedule: warmup, cosine to 0; after each merge drop to 0, re-warm linearly over
    ``restart_warmup`` steps to the LR at the merge, then a fresh cosine to 0 over the remaining steps."""

    def __init__(self, optimizer: Optimizer, *, num_training_steps: int, warmup_steps: int, merge_every: int,
                 restart_warmup: int = 50, last_epoch: int = -1):
        _check_common(num_training_steps, warmup_steps, merge_every, restart_warmup)
        if warmup_steps > merge_every:
            raise ScheduleConfigError(
                f"warmup_steps={warmup_steps} must not exceed merge_every={merge_every} for the official schedule")
        self.num_training_steps = int(num_training_steps)
        self.warmup_steps = int(warmup_steps)
        self.merge_every = int(merge_every)
        self.restart_warmup = int(restart_warmup)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return official_restart_factor(step, num_training_steps=self.num_training_steps,
                                       warmup_steps=self.warmup_steps, merge_every=self.merge_every,
                                       restart_warmup=self.restart_warmup)


class CosineRestartsScheduler(_FactorScheduler):
    """ReLoRA's ``cosine_restarts``: warmup, a global cosine to ``min_lr_ratio``, and after every restart a linear
    re-warmup over ``restart_warmup`` steps back to the envelope. ``num_training_steps`` must be a multiple of
    ``merge_every``."""

    def __init__(self, optimizer: Optimizer, *, num_training_steps: int, warmup_steps: int, merge_every: int,
                 restart_warmup: int = 50, min_lr_ratio: float = 0.1, last_epoch: int = -1):
        _check_common(num_training_steps, warmup_steps, merge_every, restart_warmup)
        if num_training_steps % merge_every != 0:
            raise ScheduleConfigError(
                f"cosine_restarts needs num_training_steps={num_training_steps} to be a multiple of "
                f"merge_every={merge_every}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ScheduleConfigError(f"min_lr_ratio={min_lr_ratio} must be in [0, 1]")
        self.num_training_steps = int(num_training_steps)
        self.warmup_steps = int(warmup_steps)
        self.merge_every = int(merge_every)
        self.restart_warmup = int(restart_warmup)
        self.min_lr_ratio = float(min_lr_ratio)
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        return cosine_restarts_factor(step, num_training_steps=self.num_training_steps,
                                      warmup_steps=self.warmup_steps, merge_every=self.merge_every,
                                      restart_warmup=self.restart_warmup, min_lr_ratio=self.min_lr_ratio)


def build_restart_scheduler(name: str, optimizer: Optimizer, *, num_training_steps: int, warmup_steps: int,
                            merge_every: int, restart_warmup: int = 50, min_lr_ratio: float = 0.1) -> LRScheduler:
    """The schedule called ``name`` (``"official"`` or ``"cosine_restarts"``) on ``optimizer``."""
    if name == "official":
        return OfficialRestartScheduler(optimizer, num_training_steps=num_training_steps, warmup_steps=warmup_steps,
                                        merge_every=merge_every, restart_warmup=restart_warmup)
    if name == "cosine_restarts":
        return CosineRestartsScheduler(optimizer, num_training_steps=num_training_steps, warmup_steps=warmup_steps,
                                       merge_every=merge_every, restart_warmup=restart_warmup,
                                       min_lr_ratio=min_lr_ratio)
    raise ScheduleConfigError(f"unknown restart schedule {name!r}; choose one of {', '.join(SCHEDULE_NAMES)}")

"""LR schedules with restarts: values at chosen steps against the closed-form formulas, rejection, resume."""
import math

import pytest
import torch

from moRA.schedules import (CosineRestartsScheduler, OfficialRestartScheduler, ScheduleConfigError,
                            build_restart_scheduler)

BASE_LR = 2e-3


def _optimizer():
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=BASE_LR)


def _lrs(sched, n):
    """LR used by optimizer updates 0..n-1."""
    out = []
    for _ in range(n):
        out.append(sched.optimizer.param_groups[0]["lr"])
        sched.optimizer.step()
        sched.step()
    return out


def _cos(p):
    return 0.5 * (1 + math.cos(math.pi * p))


def test_official_schedule_matches_formula():
    T, W, N, R = 100, 10, 30, 5
    lrs = _lrs(OfficialRestartScheduler(_optimizer(), num_training_steps=T, warmup_steps=W, merge_every=N,
                                        restart_warmup=R), T)
    f = lambda s: lrs[s] / BASE_LR  # noqa: E731
    assert f(0) == 0 and f(5) == pytest.approx(0.5)
    assert f(20) == pytest.approx(_cos((20 - W) / (T - W)))
    peak1 = _cos((30 - W) / (T - W))  # the LR the merge at step 30 interrupts
    assert f(30) == 0.0
    assert f(32) == pytest.approx(peak1 * 2 / R)
    assert f(35) == pytest.approx(peak1)
    assert f(50) == pytest.approx(peak1 * _cos((50 - 30 - R) / (T - 30 - R)))
    peak2 = peak1 * _cos((60 - 30 - R) / (T - 30 - R))
    assert f(60) == 0.0 and f(63) == pytest.approx(peak2 * 3 / R)
    assert f(89) == pytest.approx(peak2 * _cos((89 - 60 - R) / (T - 60 - R)))
    peak3 = peak2 * _cos((90 - 60 - R) / (T - 60 - R))
    assert f(92) == pytest.approx(peak3 * 2 / R)


def test_cosine_restarts_matches_formula():
    T, W, N, R, rho = 120, 10, 40, 8, 0.1
    lrs = _lrs(CosineRestartsScheduler(_optimizer(), num_training_steps=T, warmup_steps=W, merge_every=N,
                                       restart_warmup=R, min_lr_ratio=rho), T)
    env = lambda s: rho + (1 - rho) * _cos((s - W) / (T - W))  # noqa: E731
    f = lambda s: lrs[s] / BASE_LR  # noqa: E731
    assert f(4) == pytest.approx(0.4)
    assert f(25) == pytest.approx(env(25))
    assert f(40) == 0.0
    assert f(44) == pytest.approx(4 / R * env(40 + R))
    assert f(48) == pytest.approx(env(48))
    assert f(86) == pytest.approx(6 / R * env(80 + R))
    assert f(119) == pytest.approx(env(119))
    assert min(lrs[W:]) >= 0


def test_scheduler_state_survives_save_and_load(tmp_path):
    kwargs = dict(num_training_steps=100, warmup_steps=10, merge_every=30, restart_warmup=5)
    full = _lrs(OfficialRestartScheduler(_optimizer(), **kwargs), 60)
    first = OfficialRestartScheduler(_optimizer(), **kwargs)
    _lrs(first, 33)
    torch.save(first.state_dict(), tmp_path / "scheduler.pt")
    opt = _optimizer()
    resumed = OfficialRestartScheduler(opt, **kwargs)
    resumed.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    assert _lrs(resumed, 27) == pytest.approx(full[33:])


@pytest.mark.parametrize("name,kwargs,match", [
    ("cosine_restarts", dict(num_training_steps=100, warmup_steps=10, merge_every=30), "multiple of"),
    ("official", dict(num_training_steps=100, warmup_steps=10, merge_every=30, restart_warmup=30), "restart_warmup"),
    ("official", dict(num_training_steps=100, warmup_steps=40, merge_every=30), "warmup_steps=40"),
    ("official", dict(num_training_steps=100, warmup_steps=100, merge_every=30), "warmup_steps=100"),
    ("cosine_restarts", dict(num_training_steps=90, warmup_steps=10, merge_every=30, min_lr_ratio=1.5),
     "min_lr_ratio"),
    ("linear", dict(num_training_steps=90, warmup_steps=10, merge_every=30), "unknown restart schedule"),
])
def test_rejected_schedules(name, kwargs, match):
    kwargs.setdefault("restart_warmup", 5)
    with pytest.raises(ScheduleConfigError, match=match):
        build_restart_scheduler(name, _optimizer(), **kwargs)

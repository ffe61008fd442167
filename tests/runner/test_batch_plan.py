"""``runner.distributed.batch_plan``: ``trainer.batch_size`` keeps its meaning (sequences per optimizer step over all
processes) at any world size; ``micro_batch_size`` is the largest forward batch a process may take."""
from __future__ import annotations

import pytest

from runner.distributed import batch_plan
from runner.errors import ConfigError


@pytest.mark.parametrize("batch,micro,world,expected", [
    (16, 16, 1, (16, 1)),   # the CPU default on one process
    (16, 16, 2, (8, 1)),    # the same under torchrun --nproc_per_node 2 (failed before: 16 ≠ 16 × 2 × k)
    (128, 4, 8, (4, 4)),    # paper setting on 1 × 8 GPUs
    (128, 4, 32, (4, 1)),   # and on 4 × 8 GPUs
    (48, 16, 2, (12, 2)),   # 24 per process: the largest divisor ≤ 16 is 12
    (16, 5, 1, (4, 4)),
])
def test_the_global_batch_is_kept_at_every_world_size(batch, micro, world, expected):
    plan = batch_plan(batch, micro, world)
    assert (plan.micro_batch, plan.accumulation) == expected
    assert plan.micro_batch * plan.world_size * plan.accumulation == batch and plan.micro_batch <= micro


def test_a_batch_that_cannot_be_split_is_one_line():
    with pytest.raises(ConfigError, match="trainer.batch_size=15 cannot be split evenly over 2 processes"):
        batch_plan(15, 16, 2)
    with pytest.raises(ConfigError, match="trainer.micro_batch_size must be a positive integer, got 0"):
        batch_plan(16, 0, 1)


def test_the_trainer_arguments_follow_the_plan(monkeypatch):
    import runner.training
    from runner.training import training_arguments

    monkeypatch.setattr(runner.training, "world_size", lambda: 2)  # what torchrun's WORLD_SIZE gives
    trainer = {"batch_size": 16, "micro_batch_size": 16, "learning_rate": 1e-3, "max_steps": 2, "save_steps": 1,
               "logging_steps": 1}
    args = training_arguments(trainer, "unused_output_dir", "run", [])
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (8, 1)

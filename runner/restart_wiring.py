"""ReMoRA / ReLoRA glue for ``runner.run``: ``restart_components(cfg, model) -> (callbacks, scheduler_factory)``.

Called when ``cfg.adapter.restart`` is set (``configs/adapter/remora.yaml``, ``relora.yaml``). The restart set-up is
validated here, before training starts: a cycle that cannot work raises a one-line ``RestartConfigError``, a schedule
that cannot work (with ``trainer.max_steps`` given) a one-line ``ScheduleConfigError``.
``scheduler_factory(optimizer, num_training_steps)`` builds the restart LR schedule (``adapter.restart.schedule``)
that replaces the Trainer's; the first warmup is ``trainer.warmup_steps`` (a value < 1 is a fraction of the steps).
"""
from __future__ import annotations

import math
from typing import Any, Callable

from moRA.restart import RestartConfig, RestartConfigError
from runner.restart_callback import RestartCallback
from moRA.schedules import build_restart_scheduler


def _plain(node) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(node, DictConfig):
            return OmegaConf.to_container(node, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(node)


def warmup_steps_for(warmup: Any, num_training_steps: int) -> int:
    """``trainer.warmup_steps`` as a step count (HF's convention: a float < 1 is a fraction of the steps)."""
    if isinstance(warmup, float) and 0 < warmup < 1:
        return math.ceil(num_training_steps * warmup)
    return int(warmup or 0)


def restart_components(cfg, model) -> tuple[list, Callable | None]:
    """The restart callback (bound to and validated on ``model``) and the LR scheduler factory."""
    restart = RestartConfig.from_mapping(_plain(cfg.adapter.restart), seed=int(cfg.seed))
    callback = RestartCallback(restart, model)
    warmup = cfg.trainer.get("warmup_steps", 0)

    def scheduler_factory(optimizer, num_training_steps: int):
        return build_restart_scheduler(
            restart.schedule, optimizer, num_training_steps=int(num_training_steps),
            warmup_steps=warmup_steps_for(warmup, int(num_training_steps)), merge_every=restart.merge_every,
            restart_warmup=restart.restart_warmup, min_lr_ratio=restart.min_lr_ratio)

    max_steps = cfg.trainer.get("max_steps", -1)
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and max_steps > 0:
        # reject an impossible schedule now (e.g. cosine_restarts with max_steps not a multiple of merge_every)
        import torch

        scheduler_factory(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), max_steps)
    return [callback], scheduler_factory


__all__ = ["RestartConfigError", "restart_components", "warmup_steps_for"]

"""Trainer callbacks of a run: when to evaluate, what to add to the W&B run, when a checkpoint is complete, and
stopping cleanly on a cluster's termination signal.

Evaluation itself is ``TaskTrainer.evaluate`` (runner/training.py), which calls ``task.evaluate``; these callbacks
only decide *when* (every ``eval_steps`` optimizer steps or at listed steps, the last step excepted: the run evaluates once more after
training, writing per-sample outputs).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from transformers import TrainerCallback


class EvaluateEveryCallback(TrainerCallback):
    """Request an evaluation every ``eval_steps`` optimizer steps, except at the final step (``max_steps``), which
    ``run_experiment`` evaluates after ``train()`` returns. ``eval_steps``: a positive int (every N steps), a list of
    steps (exactly those, e.g. the paper's UUID steps 300, 500, 700, 900), or ``None`` / ``<= 0`` (only at the end)."""

    def __init__(self, eval_steps):
        self.every, self.at = 0, frozenset()
        if isinstance(eval_steps, int):
            self.every = eval_steps
        elif eval_steps is not None:  # a list (or OmegaConf ListConfig) of steps
            self.at = frozenset(int(step) for step in eval_steps)

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        due = (self.every > 0 and step % self.every == 0) or step in self.at
        if due and step < state.max_steps:
            control.should_evaluate = True
        return control


class WandbConfigCallback(TrainerCallback):
    """Add the resolved Hydra config (and the parameter counts) to the W&B run opened by the Trainer's
    ``WandbCallback`` (which must come earlier in the callback list)."""

    def __init__(self, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None):
        self.config = dict(config)
        self.extra = dict(extra or {})

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return control
        try:
            import wandb
        except ImportError:
            return control
        if wandb.run is not None:
            wandb.run.config.update({"run": self.config, **self.extra}, allow_val_change=True)
        return control


class CheckpointMarkerCallback(TrainerCallback):
    """Mark each checkpoint complete once everything in it is written (``runner.checkpoints.write_marker``), then
    rotate old checkpoints (``save_total_limit``; the Trainer's own rotation is switched off because it runs before
    the restart state is saved). Must be the last callback: ``on_save`` runs in callback order, after the Trainer has
    written its files. ``progress()`` gives the run's progress so far (stored in the marker, for the record)."""

    def __init__(self, config_hash: str | None, save_total_limit: int | None = None,
                 progress: Callable[[], dict] | None = None):
        self.config_hash = config_hash
        self.save_total_limit = save_total_limit
        self.progress = progress or dict

    def on_save(self, args, state, control, **kwargs):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        from runner.checkpoints import rotate_checkpoints, write_marker

        _barrier()  # every rank has written its part (DeepSpeed writes one optimizer shard per rank)
        if state.is_world_process_zero:
            write_marker(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", self.config_hash,
                         self.progress())
            rotate_checkpoints(args.output_dir, self.save_total_limit)
        _barrier()
        return control


class StopOnSignalCallback(TrainerCallback):
    """After ``SIGTERM`` (what SLURM sends before it kills a job) or ``SIGUSR1``: save a checkpoint at the end of the
    current optimizer step and stop training; ``signalled`` tells the caller. Under several processes the flag is
    combined over ranks every step, so all ranks save and stop at the same step."""

    SIGNALS = ("SIGTERM", "SIGUSR1")

    def __init__(self):
        self.signalled: str | None = None
        self._previous: dict = {}

    def install(self) -> "StopOnSignalCallback":
        import signal

        for name in self.SIGNALS:
            if hasattr(signal, name):
                self._previous[name] = signal.signal(getattr(signal, name), self._handle)
        return self

    def uninstall(self) -> None:
        import signal

        for name, handler in self._previous.items():
            signal.signal(getattr(signal, name), handler)
        self._previous = {}

    def _handle(self, signum, frame):
        import signal

        self.signalled = signal.Signals(signum).name

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.signalled is not None, args):
            self.signalled = self.signalled or "SIGTERM"
            control.should_save = True
            control.should_training_stop = True
        return control


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _any_rank(flag: bool, args) -> bool:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=args.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)

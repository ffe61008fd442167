"""Trainer callbacks of a run: when to evaluate, and what to add to the W&B run.

Evaluation itself is ``TaskTrainer.evaluate`` (runner/training.py), which calls ``task.evaluate``; these callbacks
only decide *when* (every ``eval_steps`` optimizer steps or at listed steps, the last step excepted: the run evaluates once more after
training, writing per-sample outputs).
"""
from __future__ import annotations

from typing import Any, Mapping

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

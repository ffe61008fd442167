"""The Trainer side of ReMoRA / ReLoRA: a ``TrainerCallback`` that restarts every ``merge_every`` optimizer steps and
keeps the restart state in every checkpoint.

The restarts themselves (merge-and-reinit, type cycle, optimizer-state reset, the saved restart state) are the
library's ``moRA.restart.Restarter``. This callback decides when: after optimizer step ``s`` with
``s % merge_every == 0`` and ``s < max_steps`` (none at the last step). ``on_save`` writes the restart state into the
checkpoint folder the Trainer just wrote; ``on_train_end`` into the output folder (what a saved run's analysis
reads); on resume, ``on_train_begin`` (before any forward pass) re-applies it from the checkpoint.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from moRA.restart import STATE_FILE, RestartConfig, RestartConfigError, Restarter

logger = logging.getLogger(__name__)


class RestartCallback(Restarter, TrainerCallback):
    """``Restarter`` driven by the Trainer's events. ``resume_from_checkpoint`` names the checkpoint the Trainer
    resumes from; without it ``<output_dir>/checkpoint-<global_step>`` is used."""

    def __init__(self, config: RestartConfig, model: nn.Module | None = None,
                 resume_from_checkpoint: str | os.PathLike | None = None):
        super().__init__(config, model)
        self.resume_from_checkpoint = resume_from_checkpoint

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is not None and (self._layers is None or self._layers[0].module not in set(model.modules())):
            self.bind(model)
        if state.global_step > 0:
            self._restore(args, state)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        step = state.global_step
        if step % self.config.merge_every == 0 and step < state.max_steps:
            self.restart(optimizer)
            logger.info("restart %d at step %d (%s)", self.state.merges_done, step, self.kind)

    def on_save(self, args, state, control, **kwargs):
        self.save(Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}", state.global_step,
                  write=state.is_world_process_zero)

    def on_train_end(self, args, state, control, **kwargs):
        self.save(Path(args.output_dir), state.global_step, write=state.is_world_process_zero)

    def _restore(self, args, state) -> None:
        folder = Path(self.resume_from_checkpoint or
                      Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if (folder / STATE_FILE).is_file():
            self.load(folder)
            logger.info("restored restart state from %s: %d merges", folder, self.state.merges_done)
        elif state.global_step >= self.config.merge_every:
            raise RestartConfigError(f"resuming at step {state.global_step} after merges, but {folder / STATE_FILE} "
                                     "is missing: the checkpoint is incomplete")

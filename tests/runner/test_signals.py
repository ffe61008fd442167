"""SIGTERM (what SLURM sends before it kills a job): the run saves a checkpoint at the end of the current step,
finishes the W&B run and exits with ``EXIT_PREEMPTED`` (75); the requeued command (``resume=auto``) continues to the
uninterrupted result, in the same W&B run."""
from __future__ import annotations

import os
import signal

import pytest
from transformers import TrainerCallback

from runner.checkpoints import complete_checkpoints
from runner.record import load_record
from runner.run import EXIT_PREEMPTED, Preempted, run_experiment
from tests.conftest import TINY_RUN_OVERRIDES

OVERRIDES = [*TINY_RUN_OVERRIDES, "adapter=lora", "r=4", "trainer.max_steps=6", "trainer.save_steps=4",
             "trainer.eval_steps=2", "lr=0.01"]


class SigtermDuringStep(TrainerCallback):
    """The signal arrives while step ``step`` runs (as from outside: the handler only sets a flag)."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_finishes_wandb_exits_75_and_the_requeue_continues(compose_run_config, tmp_path):
    import wandb

    reference = load_record(run_experiment(compose_run_config(*OVERRIDES, "run_id=straight")).record_path)
    cfg = compose_run_config(*OVERRIDES, "run_id=cluster", "logger=wandb_offline", "resume=auto")
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Preempted) as stopped:
        run_experiment(cfg, extra_callbacks=[SigtermDuringStep(3)])
    assert stopped.value.code == EXIT_PREEMPTED == 75
    assert signal.getsignal(signal.SIGTERM) is previous  # the handler is the run's only
    out = tmp_path / "outputs" / "cluster"
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-3"]  # saved at the step it arrived in
    assert not (tmp_path / "results" / "cluster.json").exists()
    assert wandb.run is None  # the W&B run was finished

    resumed = load_record(run_experiment(cfg).record_path)  # the requeued job: same command
    assert resumed["final"] == reference["final"]
    assert [p["step"] for p in resumed["history"]] == [p["step"] for p in reference["history"]]
    runs = sorted((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and len({r.name.rsplit("-", 1)[1] for r in runs}) == 1  # one W&B run id, two segments

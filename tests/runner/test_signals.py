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


def test_train_py_exits_75_on_sigterm_with_a_complete_checkpoint(tmp_path):
    """The real command, signalled from outside once training runs: exit code 75, no traceback, no record."""
    import subprocess
    import sys
    import time

    from tests.conftest import REPO_ROOT

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), f"output_dir={tmp_path}/out", f"results_dir={tmp_path}/res",
           *TINY_RUN_OVERRIDES, "adapter=lora", "r=4", "trainer.max_steps=100000", "trainer.save_steps=1",
           "trainer.save_total_limit=1", "run_id=term"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not complete_checkpoints(tmp_path / "out"):  # training runs: the signal handler is installed
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == EXIT_PREEMPTED, err[-3000:]
    assert "Traceback" not in err and "stopped on SIGTERM" in out
    assert complete_checkpoints(tmp_path / "out") and not (tmp_path / "res").exists()

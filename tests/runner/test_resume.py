"""Kill and resume: a run that dies after its step-4 checkpoint (at step 5) and is rerun with resume=true ends with the
same history and final metrics as an uninterrupted run; partial checkpoints are never resumed from."""
from __future__ import annotations

from pathlib import Path

import pytest
from transformers import TrainerCallback

from runner.checkpoints import complete_checkpoints, plan_start, write_marker
from runner.errors import ResumeError
from runner.record import load_record
from runner.run import run_experiment
from tests.conftest import TINY_RUN_OVERRIDES


class Killed(Exception):
    """Stands for the process being killed."""


class KillAtStep(TrainerCallback):
    """Raise at the end of optimizer step ``step`` (before that step's logging/evaluation/checkpoint)."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed(f"killed at step {state.global_step}")


OVERRIDES = [*TINY_RUN_OVERRIDES, "adapter=lora", "r=4", "trainer.max_steps=6", "trainer.save_steps=2",
             "trainer.eval_steps=2", "lr=0.01"]


def test_kill_and_resume_gives_the_uninterrupted_result(compose_run_config, tmp_path):
    reference = load_record(run_experiment(compose_run_config(*OVERRIDES, "run_id=uninterrupted")).record_path)

    cfg = compose_run_config(*OVERRIDES, "run_id=killed")
    with pytest.raises(Killed):
        run_experiment(cfg, extra_callbacks=[KillAtStep(5)])
    out = tmp_path / "outputs" / "killed"
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert not (tmp_path / "results" / "killed.json").exists()  # a dead run writes no record

    # rerunning without resume=true refuses to clobber the unfinished run's checkpoints
    with pytest.raises(ResumeError, match="resume=true"):
        run_experiment(cfg)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]

    resumed = load_record(run_experiment(compose_run_config(*OVERRIDES, "run_id=killed", "resume=true")).record_path)
    assert resumed["final"] == reference["final"]
    assert resumed["history"] == reference["history"]
    assert [p["step"] for p in resumed["history"] if "char_acc" in p] == [2, 4, 6]  # every eval_steps + the end


def test_partial_checkpoint_is_skipped_and_missing_checkpoint_is_an_error(tmp_path):
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        plan_start(tmp_path, resume=True, overwrite=False)
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-2" / "trainer_state.json").write_text("{}")
    write_marker(tmp_path / "checkpoint-2", None)
    (tmp_path / "checkpoint-4").mkdir()  # killed while saving: no marker
    (tmp_path / "checkpoint-4" / "trainer_state.json").write_text("{}")
    # the incomplete later checkpoint is stale: the resumed run writes it again
    assert plan_start(tmp_path, resume=True, overwrite=False) == (tmp_path / "checkpoint-2",
                                                                  [tmp_path / "checkpoint-4"])
    with pytest.raises(ResumeError, match="unfinished run"):
        plan_start(tmp_path, resume=False, overwrite=False)
    _, stale = plan_start(tmp_path, resume=False, overwrite=True)
    assert [p.name for p in stale] == ["checkpoint-2", "checkpoint-4"]


class KillAtTrainEnd(TrainerCallback):
    """Dies after the last checkpoint, before the final evaluation and the record."""

    def on_train_end(self, args, state, control, **kwargs):
        raise Killed("killed after training")


def test_resume_on_a_finished_run_leaves_its_record_alone(compose_run_config):
    summary = run_experiment(compose_run_config(*OVERRIDES, "run_id=done"))
    before = summary.record_path.read_bytes()
    copy_before = (summary.output_dir / "record.json").read_bytes()
    again = run_experiment(compose_run_config(*OVERRIDES, "run_id=done", "resume=true"))
    assert summary.record_path.read_bytes() == before and (summary.output_dir / "record.json").read_bytes() == \
        copy_before
    assert again.final == summary.final


def test_the_record_of_a_resumed_run_counts_every_segment(compose_run_config):
    from runner.checkpoints import read_marker

    with pytest.raises(Killed):
        run_experiment(compose_run_config(*OVERRIDES, "run_id=segments"), extra_callbacks=[KillAtTrainEnd()])
    cfg = compose_run_config(*OVERRIDES, "run_id=segments", "resume=true")
    earlier = read_marker(Path(str(cfg.output_dir)) / "checkpoint-6")["progress"]
    assert earlier["tokens"] > 0 and earlier["train_seconds"] > 0 and earlier["wall_seconds"] > 0
    record = load_record(run_experiment(cfg).record_path)  # trains no step: everything was done before the kill
    assert record["wall_time_s"] > earlier["wall_seconds"]
    # tokens/s over both segments (the second trained nothing): not 0.0 as when only the last segment counted
    assert 0.5 * earlier["tokens"] / earlier["train_seconds"] < record["tokens_per_s"] <= \
        earlier["tokens"] / earlier["train_seconds"]

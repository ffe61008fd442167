"""A rerun never destroys a finished run before it has itself succeeded: it trains aside (``<output_dir>/.attempt``)
and replaces the finished run's files only at the end (issue: a rerun with a bad setting deleted the checkpoints and
record, then failed)."""
from __future__ import annotations

import pytest

from runner.checkpoints import ATTEMPT_DIR, complete_checkpoints
from runner.errors import NonFiniteLossError
from runner.record import load_record
from runner.run import run_experiment
from tests.conftest import TINY_RUN_OVERRIDES

RUN = [*TINY_RUN_OVERRIDES, "adapter=fft", "trainer.max_steps=2", "trainer.save_steps=1", "run_id=kept"]


def _snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and "wandb" not in p.parts}


def test_a_failed_rerun_leaves_the_finished_run_as_it_was(compose_run_config, tmp_path):
    summary = run_experiment(compose_run_config(*RUN))
    out, record = summary.output_dir, summary.record_path
    before, record_before = _snapshot(out), record.read_bytes()
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]

    # the same id, a bad setting (the loss becomes NaN at step 2), replacing allowed: fails without harm
    with pytest.raises(NonFiniteLossError):
        run_experiment(compose_run_config(*RUN, "lr=1e30", "overwrite=true"))
    assert record.read_bytes() == record_before
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith(ATTEMPT_DIR)} == before
    assert [p.name for p in complete_checkpoints(out / ATTEMPT_DIR)] == ["checkpoint-1"]  # the failed attempt


def test_a_successful_rerun_replaces_the_finished_run(compose_run_config, tmp_path):
    first = run_experiment(compose_run_config(*RUN))
    old_adapter = (first.output_dir / "model" / "model.safetensors").read_bytes()
    second = run_experiment(compose_run_config(*RUN, "lr=0.01", "overwrite=true"))
    out = second.output_dir
    assert not (out / ATTEMPT_DIR).exists()
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-1", "checkpoint-2"]
    record = load_record(second.record_path)
    assert record["lr"] == 0.01 and load_record(out / "record.json") == record
    assert record["output_dir"] == str(out) and (out / "samples" / "uuid_samples.jsonl").is_file()
    assert (out / "model" / "model.safetensors").read_bytes() != old_adapter

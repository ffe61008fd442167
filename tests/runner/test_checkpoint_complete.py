"""A ReMoRA checkpoint counts as complete only when everything it needs is on disk (issue: the Trainer's
``trainer_state.json`` came before the restart state, so a kill in between left a "complete" checkpoint that every
resume then failed on). A kill at every file boundary of a real checkpoint save, or a file truncated later, makes the
checkpoint incomplete, and the resume falls back to the previous one with the uninterrupted result."""
from __future__ import annotations

import json
import os
import shutil

import pytest
from transformers import TrainerCallback

from runner.checkpoints import (MARKER_FILE, checkpoint_problem, complete_checkpoints, plan, read_marker,
                                write_marker)
from runner.errors import ResumeError
from runner.identity import config_hash
from runner.record import load_record
from runner.run import run_experiment
from tests.conftest import TINY_RUN_OVERRIDES, compose

OVERRIDES = [*TINY_RUN_OVERRIDES, "adapter=remora", "r=8", "trainer.max_steps=6", "trainer.save_steps=2",
             "trainer.save_total_limit=null", "adapter.restart.merge_every=2", "adapter.restart.restart_warmup=1",
             "lr=0.01", "run_id=remora"]


class Killed(Exception):
    pass


class KillAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed()


def _cfg(base, name, *extra):
    return compose([f"output_dir={base}/{name}/out", f"results_dir={base}/{name}/results", *OVERRIDES, *extra])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run's record and a run killed at step 5 (complete checkpoints 2 and 4, merges at 2, 4)."""
    base = tmp_path_factory.mktemp("remora")
    reference = load_record(run_experiment(_cfg(base, "reference")).record_path)
    with pytest.raises(Killed):
        run_experiment(_cfg(base, "killed"), extra_callbacks=[KillAtStep(5)])
    killed = base / "killed" / "out"
    assert [p.name for p in complete_checkpoints(killed)] == ["checkpoint-2", "checkpoint-4"]
    return base, reference, killed


def _save_order(checkpoint):
    """The checkpoint's files in the order they were written (the marker last)."""
    files = [p for p in checkpoint.rglob("*") if p.is_file() and p.name != MARKER_FILE]
    return sorted(files, key=lambda p: p.stat().st_mtime_ns)


def test_marker_lists_everything_including_the_restart_state(runs):
    _, _, killed = runs
    marker = read_marker(killed / "checkpoint-4")
    assert {"trainer_state.json", "restart_state.json", "restart_base_weights.safetensors", "optimizer.pt",
            "scheduler.pt", "adapter_model.safetensors"} <= set(marker["files"])
    assert marker["config_hash"] == config_hash(_cfg("x", "y")) and marker["step"] == 4
    assert marker["progress"]["tokens"] > 0 and marker["progress"]["train_seconds"] > 0


def test_a_kill_at_every_file_boundary_leaves_an_incomplete_checkpoint(runs, tmp_path):
    _, _, killed = runs
    written = _save_order(killed / "checkpoint-4")
    assert len(written) >= 10
    for i in range(len(written) + 1):  # killed after the first i files: the marker (last) is not there
        partial = tmp_path / f"kill{i}" / "checkpoint-4"
        for path in written[:i]:
            target = partial / path.relative_to(killed / "checkpoint-4")
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
        partial.mkdir(parents=True, exist_ok=True)
        assert checkpoint_problem(partial) is not None, written[:i]
    # the window of the issue: everything the Trainer writes is there, the restart state is not
    assert (tmp_path / f"kill{len(written)}" / "checkpoint-4" / "trainer_state.json").is_file()


@pytest.mark.parametrize("how", ["truncate", "delete"])
def test_every_file_is_checked_after_the_marker(runs, tmp_path, how):
    _, _, killed = runs
    folder = tmp_path / "checkpoint-4"
    shutil.copytree(killed / "checkpoint-4", folder)
    assert checkpoint_problem(folder) is None
    for name in read_marker(folder)["files"]:
        original = (folder / name).read_bytes()
        if how == "delete":
            (folder / name).unlink()
        else:
            (folder / name).write_bytes(original[: len(original) // 2])
        assert name in (checkpoint_problem(folder) or ""), name
        (folder / name).write_bytes(original)
    assert checkpoint_problem(folder) is None


@pytest.mark.parametrize("damage", ["restart_state_not_written", "adapter_truncated", "optimizer_truncated",
                                    "scheduler_truncated"])
def test_resume_falls_back_to_the_last_complete_checkpoint_with_the_uninterrupted_result(runs, damage):
    base, reference, killed = runs
    out = base / damage / "out"
    shutil.copytree(killed, out)
    ckpt = out / "checkpoint-4"
    if damage == "restart_state_not_written":  # killed between trainer_state.json and the restart state
        for name in ("restart_state.json", "restart_base_weights.safetensors", MARKER_FILE):
            (ckpt / name).unlink()
    else:
        name = {"adapter_truncated": "adapter_model.safetensors", "optimizer_truncated": "optimizer.pt",
                "scheduler_truncated": "scheduler.pt"}[damage]
        os.truncate(ckpt / name, (ckpt / name).stat().st_size // 2)
    assert [p.name for p in complete_checkpoints(out)] == ["checkpoint-2"]
    resumed = load_record(run_experiment(_cfg(base, damage, "resume=true")).record_path)
    assert resumed["final"] == reference["final"]
    assert resumed["history"] == reference["history"]


def test_checkpoints_this_project_did_not_write_are_refused(tmp_path):
    """Loading a checkpoint unpickles files (RNG state; DeepSpeed's shards with weights_only=False): a folder without
    our marker — e.g. someone else's checkpoint copied in — is never resumed, and the message says why."""
    foreign = tmp_path / "checkpoint-8"
    foreign.mkdir()
    (foreign / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    (foreign / "rng_state.pth").write_bytes(b"not ours")
    assert "not written by this project" in checkpoint_problem(foreign)
    with pytest.raises(ResumeError, match="no complete checkpoint"):
        plan(tmp_path, True, False)
    forged = write_marker(foreign, "abc")  # a marker of another writer's schema is not ours either
    data = json.loads(forged.read_text())
    forged.write_text(json.dumps({**data, "written_by": "someone"}))
    assert "not this project's" in checkpoint_problem(foreign)

"""A run's identity covers every setting that can change its result: runs that differ never share a record or a
folder, a resume never picks up another config's checkpoint, and one run id has at most one live process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runner.checkpoints import plan, write_marker
from runner.errors import ResumeError
from runner.identity import config_hash
from runner.record import load_record
from runner.run import run_experiment
from runner.run_lock import LOCK_FILE, RunLock, RunLockedError
from tests.conftest import TINY_RUN_OVERRIDES, compose


def _id(*overrides):
    return str(compose(list(overrides)).run_id)


@pytest.mark.parametrize("a,b", [
    ("trainer.max_steps=10", "trainer.max_steps=30"),
    ("task.n_pairs=8", "task.n_pairs=16"),
    ("model.dtype=float32", "model.dtype=bfloat16"),
    ("adapter.dropout=0.0", "adapter.dropout=0.1"),
    ("trainer.weight_decay=0.0", "trainer.weight_decay=0.1"),
])
def test_runs_that_differ_in_a_result_setting_get_different_ids(a, b):
    assert _id(a) != _id(b)
    assert _id(a).startswith("uuid-tiny-mora-r8-rope-lr3e-3-s42-")  # readable name + config hash


@pytest.mark.parametrize("other", ["logger=none", "trainer.num_threads=3", "output_dir=elsewhere", "resume=auto",
                                   "trainer.save_steps=7", "sweep=mine"])
def test_settings_that_cannot_change_the_result_keep_the_id(other):
    assert _id(other) == _id()


def test_r_written_as_a_float_names_the_same_run():
    assert _id("r=1e3") == _id("r=1000") and "-r1000-" in _id("r=1e3")


def test_a_sweep_over_trainer_settings_leaves_one_record_per_setting(compose_run_config, tmp_path):
    ids = []
    for steps in (2, 4):
        cfg = compose_run_config(*TINY_RUN_OVERRIDES, "adapter=lora", "r=4", f"trainer.max_steps={steps}")
        ids.append(load_record(run_experiment(cfg).record_path)["run_id"])
    assert ids[0] != ids[1]
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == sorted(f"{i}.json" for i in ids)
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == sorted(ids)


def test_resume_refuses_a_checkpoint_written_under_another_config(compose_run_config, tmp_path):
    cfg = compose_run_config(*TINY_RUN_OVERRIDES, "run_id=mine", "resume=true")
    ckpt = tmp_path / "outputs" / "mine" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    write_marker(ckpt, "0ther000")  # e.g. the lr=1e6 rerun's checkpoint under the same explicit run_id
    with pytest.raises(ResumeError, match="written under a different config"):
        run_experiment(cfg)
    write_marker(ckpt, config_hash(cfg))
    assert plan(ckpt.parent, True, False, config_hash(cfg)).resume_from == ckpt


def test_an_explicit_run_id_never_replaces_another_configs_record(compose_run_config, tmp_path):
    first = compose_run_config(*TINY_RUN_OVERRIDES, "adapter=lora", "r=4", "trainer.max_steps=2", "run_id=shared")
    record = run_experiment(first).record_path
    before = record.read_bytes()
    other = compose_run_config(*TINY_RUN_OVERRIDES, "adapter=lora", "r=4", "trainer.max_steps=3", "run_id=shared")
    for resume in ("false", "true", "auto"):
        with pytest.raises(ResumeError, match="record of a different config"):
            run_experiment(compose_run_config(*TINY_RUN_OVERRIDES, "adapter=lora", "r=4", "trainer.max_steps=3",
                                              "run_id=shared", f"resume={resume}"))
    assert other.run_id == first.run_id and record.read_bytes() == before


def test_a_second_live_run_of_one_id_is_refused_and_a_dead_ones_lock_taken_over(compose_run_config, tmp_path):
    out = tmp_path / "outputs" / "locked"
    out.mkdir(parents=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname(), "run_id": "locked"}))
        with pytest.raises(RunLockedError, match=f"already running \\(pid {live.pid}"):
            run_experiment(compose_run_config(*TINY_RUN_OVERRIDES, "run_id=locked"))
    finally:
        live.kill()
        live.wait()
    assert not list(out.glob("checkpoint-*"))
    with RunLock(out, "locked") as lock:  # the owner died: its lock is taken over
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
        with pytest.raises(RunLockedError, match="already running in this process"):
            RunLock(out, "locked").acquire()
    assert not (out / LOCK_FILE).exists()

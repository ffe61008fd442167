"""A sweep killed mid-run and submitted again: the finished run is skipped, the killed one continues from its last
checkpoint, and every run ends with exactly one record (Hydra multirun, basic launcher, ``resume=auto``)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.distributed.conftest import REPO, TIMEOUT_S, subprocess_env

MAX_STEPS, SAVE_STEPS = 100, 20


def _sweep(tmp_path: Path) -> list[str]:
    return [sys.executable, "train.py", "-m", "seed=1,2", "sweep=resubmit_test", "resume=auto",
            "task.n_pairs=8", "task.eval_n=4", "trainer.batch_size=4", "trainer.micro_batch_size=4",
            f"trainer.max_steps={MAX_STEPS}", f"trainer.save_steps={SAVE_STEPS}", "trainer.eval_steps=1000",
            "trainer.logging_steps=20", "trainer.warmup_steps=0", "trainer.num_threads=1", "logger=none",
            f"output_dir={tmp_path}/outputs/${{run_id}}", f"results_dir={tmp_path}/results",
            f"hydra.sweep.dir={tmp_path}/sweep"]


def _complete_checkpoints(folder: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("checkpoint-*")
                  if (p / "mora_checkpoint.json").is_file())  # complete: our marker is written last


def _run_ids(tmp_path: Path) -> list[str]:
    """The run ids of the sweep's two jobs (readable name + config hash)."""
    from tests.conftest import compose

    plain = [a for a in _sweep(tmp_path)[3:] if not a.startswith(("seed=", "hydra."))]
    return [str(compose([*plain, f"seed={s}"]).run_id) for s in (1, 2)]


def test_killed_sweep_resubmitted_completes_without_duplicates(tmp_path):
    RUN_IDS = _run_ids(tmp_path)
    results, second_run = tmp_path / "results", tmp_path / "outputs" / RUN_IDS[1]
    # 1) submit; kill the whole sweep once the second run has saved a checkpoint (the first run is then finished)
    proc = subprocess.Popen(_sweep(tmp_path), cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT_S
    while not _complete_checkpoints(second_run):
        assert proc.poll() is None, f"the sweep ended before it could be killed:\n{proc.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "no checkpoint of the second run in time"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    first_record = results / f"{RUN_IDS[0]}.json"
    assert first_record.is_file() and not (results / f"{RUN_IDS[1]}.json").exists()
    killed_at = _complete_checkpoints(second_run)[-1]
    assert killed_at < MAX_STEPS
    first_bytes = first_record.read_bytes()

    # 2) the same command again
    again = subprocess.run(_sweep(tmp_path), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-4000:]
    assert f"{RUN_IDS[0]}: skipped, completed record exists" in out
    assert f"{RUN_IDS[1]}: resuming from {second_run}/checkpoint-" in out
    resumed_from = int(out.split(f"{RUN_IDS[1]}: resuming from {second_run}/checkpoint-")[1].split()[0])
    assert resumed_from >= killed_at  # the last complete checkpoint (a later one may have finished while dying)

    # exactly one record per run; the finished run's record untouched; the resumed run reached the end
    assert sorted(p.name for p in results.iterdir()) == sorted(f"{r}.json" for r in RUN_IDS)
    assert first_record.read_bytes() == first_bytes
    second = json.loads((results / f"{RUN_IDS[1]}.json").read_text())
    assert second["status"] == "completed" and second["sweep"] == "resubmit_test"
    steps = [p["step"] for p in second["history"] if "train_loss" in p]
    assert steps[0] == 20 and steps[-1] == MAX_STEPS  # the log before the kill was kept through the resume
    assert json.loads((second_run / f"checkpoint-{MAX_STEPS}" / "trainer_state.json").read_text())[
        "global_step"] == MAX_STEPS

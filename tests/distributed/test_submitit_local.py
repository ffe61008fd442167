"""A 2-job multirun through hydra-submitit-launcher's local executor (``hydra/launcher=local``: the same submission
path as ``hydra/launcher=slurm``, each job a separate process), then the same command again: nothing is re-trained."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.distributed.conftest import REPO, TIMEOUT_S, subprocess_env

RUN_IDS = [f"uuid-tiny-mora-r8-rope-lr3e-3-s{s}" for s in (1, 2)]


def _sweep(tmp_path: Path) -> list[str]:
    return [sys.executable, "train.py", "-m", "seed=1,2", "sweep=submitit_test", "resume=auto",
            "hydra/launcher=local", "task.n_pairs=8", "task.eval_n=4", "trainer.batch_size=4",
            "trainer.micro_batch_size=4", "trainer.max_steps=2", "trainer.save_steps=2", "trainer.eval_steps=1000",
            "trainer.logging_steps=1", "trainer.warmup_steps=0", "trainer.num_threads=1", "logger=none",
            f"output_dir={tmp_path}/outputs/${{run_id}}", f"results_dir={tmp_path}/results",
            f"hydra.sweep.dir={tmp_path}/sweep"]


def _submit(tmp_path: Path) -> str:
    proc = subprocess.run(_sweep(tmp_path), cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout + proc.stderr


def _job_logs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "sweep" / ".submitit").glob("*/*_log.out"))


def test_two_job_multirun_through_submitit_local_then_resubmitted(tmp_path):
    out = _submit(tmp_path)
    assert "Submitit 'local' sweep output dir" in out
    logs = _job_logs(tmp_path)
    assert len(logs) == 2  # two submitit jobs, i.e. two separate processes
    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "results").iterdir()}
    assert sorted(records) == sorted(f"{r}.json" for r in RUN_IDS)
    assert {r["seed"] for r in records.values()} == {1, 2}
    assert all(r["sweep"] == "submitit_test" and r["status"] == "completed" for r in records.values())
    before = {name: (tmp_path / "results" / name).read_bytes() for name in records}

    _submit(tmp_path)  # the same command: both runs exist, so both jobs skip
    new_logs = [p for p in _job_logs(tmp_path) if p not in logs]
    assert len(new_logs) == 2
    assert all("skipped, completed record exists" in p.read_text() for p in new_logs)
    assert {name: (tmp_path / "results" / name).read_bytes() for name in records} == before

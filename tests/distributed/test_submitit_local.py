"""A 2-job multirun through hydra-submitit-launcher's local executor (``hydra/launcher=local``: the submission path of
``hydra/launcher=slurm``, each job its own processes), each job run as 2 tasks like a SLURM job over 2 GPUs; then the
same command again, which re-trains nothing. The second job has a bad value and fails in its own processes: it is
noted in the sweep folder, the first completes, and the submitting process exits 1 naming it.

The 2 tasks of a job get torch's distributed variables from ``runner.distributed.DistributedEnvCallback`` (the
callback configs/hydra/launcher/{local,slurm}.yaml install), so the Trainer sees a world of 2: accumulation 1 for a
global batch of 8 at micro-batch 4, and the weights of the one-process run with the same global batch."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import re

import torch

from tests.distributed.conftest import REPO, TIMEOUT_S, TINY_DISTRIBUTED, load_weights, subprocess_env

HASH = r"-[0-9a-f]{8}"  # every run id ends in its config's hash (runner/identity.py)
RUN_IDS = ["uuid-tiny-mora-r8-rope-lr3e-3-s42"]
BAD_RUN_ID = "uuid-tiny-mora-r8-rope-lr3e-3-soops"
ATOL = 1e-5


def _sweep(tmp_path: Path) -> list[str]:
    return [sys.executable, "train.py", "-m", "seed=42,oops", "sweep=submitit_test", "resume=auto",
            "hydra/launcher=local", "hydra.launcher.tasks_per_node=2", *TINY_DISTRIBUTED,
            "trainer.micro_batch_size=4", f"output_dir={tmp_path}/outputs/${{run_id}}",
            f"results_dir={tmp_path}/results", f"hydra.sweep.dir={tmp_path}/sweep"]


def _submit(tmp_path: Path) -> str:
    proc = subprocess.run(_sweep(tmp_path), cwd=REPO, env=subprocess_env(TRANSFORMERS_VERBOSITY="info"),
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-4000:]  # the seed=oops job failed
    assert re.match(rf"error: 1 job of the sweep failed \({BAD_RUN_ID}{HASH}\)", proc.stderr.splitlines()[-1]), proc.stderr
    assert re.search(rf"failed: {BAD_RUN_ID}{HASH}: seed must be an integer, got seed='oops'", proc.stderr)
    return proc.stdout + proc.stderr


def _job_logs(tmp_path: Path) -> dict[str, list[Path]]:
    """submitit job folder → its tasks' stdout and stderr logs."""
    return {d.name: sorted(d.glob("*_log.*")) for d in (tmp_path / "sweep" / ".submitit").iterdir()
            if d.is_dir() and d.name.isdigit()}


def test_two_job_multirun_of_two_task_jobs_through_submitit_local(tmp_path, one_process_reference):
    out = _submit(tmp_path)
    assert "Submitit 'local' sweep output dir" in out
    jobs = _job_logs(tmp_path)
    assert len(jobs) == 2 and all(len(logs) == 4 for logs in jobs.values())  # 2 jobs × 2 tasks × out/err
    assert [re.fullmatch(rf"{BAD_RUN_ID}{HASH}\.json", p.name) is not None
            for p in (tmp_path / "sweep" / "failed").iterdir()] == [True]
    for logs in jobs.values():  # the Trainer (rank 0) saw a world of 2
        if "seed must be an integer" in "".join(log.read_text() for log in logs):
            continue
        text = "".join(log.read_text() for log in logs)
        assert "Gradient Accumulation steps = 1" in text and "(w. parallel, distributed & accumulation) = 8" in text

    records = {p.name: json.loads(p.read_text()) for p in (tmp_path / "results").iterdir()}
    assert len(records) == len(RUN_IDS) and all(re.fullmatch(rf"{r}{HASH}\.json", name)
                                                for name, r in zip(sorted(records), sorted(RUN_IDS)))
    assert all(r["sweep"] == "submitit_test" and r["status"] == "completed" for r in records.values())
    run_folder = tmp_path / "outputs" / sorted(records)[0].removesuffix(".json")
    adapter = load_weights(run_folder / "adapter" / "adapter_model.safetensors")
    for name, ref in one_process_reference.items():  # seed 42 = the reference run's seed
        saved = adapter[name.replace(".default.", ".").removesuffix(".default")]
        assert torch.allclose(saved, ref, atol=ATOL, rtol=0), f"{name}: 2-task job vs 1 process"

    before = {name: (tmp_path / "results" / name).read_bytes() for name in records}
    _submit(tmp_path)  # the same command: both runs exist, so both jobs skip
    new_logs = [log for job, logs in _job_logs(tmp_path).items() if job not in jobs for log in logs
                if log.name.endswith(".out")]
    assert len(new_logs) == 4  # 2 jobs × 2 tasks
    assert sum("skipped, completed record exists" in p.read_text() for p in new_logs) == 1  # rank 0 of the good job
    assert {name: (tmp_path / "results" / name).read_bytes() for name in records} == before

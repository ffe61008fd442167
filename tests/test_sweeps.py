"""scripts/sweep_paper.py and the skip/resume rule behind re-submitting a sweep (``resume=auto``).

The end-to-end proofs (a sweep killed mid-run and re-submitted; a multirun through submitit's local executor) are in
tests/distributed/; here: which command each table gets, which runs a re-submission skips, resumes or starts, the
SLURM launcher config, the W&B id/group of a run."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from scripts.sweep_paper import (SlurmResources, SweepError, expand, main, row_grid, run_states, sweep_commands,
                                 table_experiments, table_states)
from tests.conftest import CONFIG_DIR, compose

PAPER = sorted(f"paper/{p.stem}" for p in (CONFIG_DIR / "experiment" / "paper").glob("*.yaml"))


# ------------------------------------------------------------------------------------------------------- commands
def test_each_paper_file_belongs_to_exactly_one_table():
    tables = ("uuid", "finetune", "pretrain", "ablation")
    rows = [row for table in tables for row in table_experiments(table)]
    assert sorted(rows) == PAPER and len(rows) == len(set(rows))
    assert [len(table_experiments(t)) for t in tables] == [9, 52, 8, 8]


def test_the_uuid_sweep_on_slurm_is_one_multirun_per_row():
    commands = sweep_commands("uuid", seeds=[42, 43], launcher="slurm",
                              resources=SlurmResources(partition="gpu", account="acct", nodes=4, gpus_per_node=8,
                                                       timeout_min=720))
    assert [argv[3] for argv in commands] == [f"experiment={row}" for row in table_experiments("uuid")]
    for argv in commands:
        assert argv[:3] == ["python", "train.py", "-m"]
        assert argv[4:] == ["seed=42,43", "sweep=paper_uuid", "resume=auto", "results_dir=results/runs",
                            "hydra.sweep.dir=outputs/sweeps/paper_uuid", "hydra/launcher=slurm",
                            "hydra.launcher.partition=gpu", "hydra.launcher.account=acct", "hydra.launcher.nodes=4",
                            "hydra.launcher.gpus_per_node=8", "hydra.launcher.timeout_min=720"]


def test_a_rows_grid_comes_from_its_file():
    assert row_grid("paper/math_loraplus_r8") == {"lr": "1e-4,2e-4", "adapter.loraplus_lr_ratio": "2,4"}
    assert row_grid("paper/math_fft") == {}
    jobs = expand(["experiment=paper/math_loraplus_r8", "seed=1"])
    assert len(jobs) == 4 and ["lr=1e-4", "adapter.loraplus_lr_ratio=4", "experiment=paper/math_loraplus_r8",
                               "seed=1"] in jobs
    # a key given on the command line replaces the file's grid, as in Hydra
    assert expand(["experiment=paper/math_loraplus_r8", "lr=5e-4"]) == [
        ["adapter.loraplus_lr_ratio=2", "experiment=paper/math_loraplus_r8", "lr=5e-4"],
        ["adapter.loraplus_lr_ratio=4", "experiment=paper/math_loraplus_r8", "lr=5e-4"]]


def test_the_ablation_has_its_own_rows():
    argv = sweep_commands("ablation", launcher="basic")
    assert [a[3] for a in argv] == [f"experiment=paper/ablation_{t}_r{r}" for t in
                                    ("decouple", "rope", "sharing", "truncation") for r in (256, 8)]
    assert not any(a.startswith("hydra/launcher") for c in argv for a in c)


def test_bad_sweep_requests_fail_with_one_line(capsys):
    with pytest.raises(SweepError, match="launcher 'pbs'"):
        sweep_commands("uuid", launcher="pbs")
    assert main(["command", "uuid", "--seeds", "4x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --seeds must be comma-separated integers") and err.count("\n") == 1


def test_multirun_expansion_order():
    assert expand(["experiment=a,b", "seed=1,2", "hydra.sweep.dir=x", "lr=0.1"]) == [
        ["experiment=a", "seed=1", "lr=0.1"], ["experiment=a", "seed=2", "lr=0.1"],
        ["experiment=b", "seed=1", "lr=0.1"], ["experiment=b", "seed=2", "lr=0.1"]]


def test_every_table_sweep_composes_with_distinct_run_ids():
    """Every job of a table composes, and no two jobs of a table share a run_id (they would share one record); the
    whole grid of every paper file is checked without Hydra's launcher in tests/test_paper_settings.py."""
    for table, rows, count in (("pretrain", None, 16), ("uuid", ["paper/uuid_fft", "paper/uuid_lora_r8"], 8)):
        states = table_states(table, seeds=[42, 43], experiments=rows)
        assert len(states) == count and len({s.run_id for s in states}) == count
        assert all(s.state == "new" for s in states)  # nothing of the paper's runs exists in the repository


# ------------------------------------------------------------------------------------------- skip / resume rule
def _tiny(tmp_path: Path) -> list[str]:
    return [f"output_dir={tmp_path}/outputs/${{run_id}}", f"results_dir={tmp_path}/results", "logger=none"]


def _write_record(cfg, results_dir: Path) -> Path:
    from omegaconf import OmegaConf

    from runner.record import build_record, write_record

    config = OmegaConf.to_container(cfg, resolve=True)  # what a run records (its identity is this config's hash)
    record = build_record(run_id=str(cfg.run_id), task="uuid", adapter="mora", r=8, mora_type="rope", model="tiny",
                          seed=int(cfg.seed), lr=float(cfg.lr), experiment=None, sweep="t", config=config,
                          params={"trainable": 1, "total": 2, "lora_equivalent": 1}, history=[{"step": 1}],
                          final={"char_acc": 0.5}, wall_time_s=1.0, tokens_per_s=1.0, output_dir="o")
    return write_record(record, results_dir)


def _checkpoint(output_dir: Path, step: int, complete: bool = True) -> None:
    folder = output_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    if complete:
        from runner.checkpoints import write_marker

        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        write_marker(folder, None)


def test_resubmission_skips_completed_resumes_unfinished_and_starts_new(tmp_path):
    overrides = ["seed=1,2,3,4", "sweep=t", "resume=auto", *_tiny(tmp_path)]
    jobs = expand(overrides)
    cfgs = [compose(job) for job in jobs]
    out = [Path(str(c.output_dir)) for c in cfgs]
    _write_record(cfgs[0], tmp_path / "results")                      # seed 1: done
    _checkpoint(out[1], 10), _checkpoint(out[1], 20), _checkpoint(out[1], 30, complete=False)  # seed 2: killed
    _checkpoint(out[2], 10, complete=False)                             # seed 3: killed while saving its first
    # seed 4: never started
    states = run_states(overrides)
    assert [(s.state, s.checkpoint) for s in states] == [
        ("completed", None), ("resumable", "checkpoint-20"), ("new", None), ("new", None)]
    assert [s.run_id for s in states] == [str(c.run_id) for c in cfgs]

    # a record that is not a valid completed record does not count as done
    (tmp_path / "results" / f"{cfgs[3].run_id}.json").write_text('{"status": "running"}')
    assert run_states(overrides)[3].state == "new"


def test_resubmission_state_looks_in_the_jobs_folders_of_the_sweep(tmp_path):
    """Without output_dir=…, a multirun job's folder (checkpoints, record) is hydra.sweep.dir/<run_id>."""
    overrides = ["seed=1,2", "sweep=t", "resume=auto", "logger=none", f"hydra.sweep.dir={tmp_path}/sweep"]
    run_ids = [s.run_id for s in run_states(overrides)]
    _checkpoint(tmp_path / "sweep" / run_ids[1], 10)
    _write_record(compose(["seed=1", f"output_dir={tmp_path}/sweep/{run_ids[0]}"]), tmp_path / "sweep" / run_ids[0])
    assert [(s.state, s.checkpoint) for s in run_states(overrides)] == [("completed", None),
                                                                       ("resumable", "checkpoint-10")]


def test_the_runner_applies_the_same_rule(tmp_path):
    """``runner.run.run_experiment`` with ``resume=auto``: returns the existing record without training (before any
    model is built), and plans a resume from the last complete checkpoint."""
    from runner.checkpoints import plan_start
    from runner.run import resume_mode, run_experiment

    cfg = compose(["resume=auto", *_tiny(tmp_path)])
    path = _write_record(cfg, tmp_path / "results")
    before = path.read_bytes()
    summary = run_experiment(cfg)
    assert summary.final == {"char_acc": 0.5} and summary.record_path == path and path.read_bytes() == before
    assert not Path(str(cfg.output_dir)).exists()  # nothing was trained or written

    out = tmp_path / "unfinished"
    _checkpoint(out, 5), _checkpoint(out, 7, complete=False)
    assert plan_start(out, "auto", False) == (out / "checkpoint-5", [out / "checkpoint-7"])  # 7 is written again
    (out / "record.json").write_text("{}")  # a finished run's folder: nothing is resumed from or deleted there
    resume_from, stale = plan_start(out, "auto", True)
    assert resume_from is None and stale == []
    assert resume_mode("auto") == "auto" and resume_mode(True) is True
    with pytest.raises(ValueError, match="resume must be true, false or auto, got 'sometimes'"):
        resume_mode("sometimes")


def test_wandb_run_is_grouped_by_sweep_and_resumed_under_an_id_from_the_run_id(tmp_path, monkeypatch):
    from runner.run import _setup_logger, wandb_run_id

    for key in ("WANDB_RUN_ID", "WANDB_RESUME", "WANDB_RUN_GROUP", "WANDB_DIR", "WANDB_MODE", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)
    logger = {"backend": "wandb", "mode": "offline", "project": "mora"}
    assert _setup_logger(logger, tmp_path, "uuid-tiny-mora-r8-rope-lr3e-3-s1", "paper_uuid") == ["wandb"]
    assert os.environ["WANDB_RUN_ID"] == "uuid-tiny-mora-r8-rope-lr3e-3-s1"
    assert os.environ["WANDB_RESUME"] == "allow" and os.environ["WANDB_RUN_GROUP"] == "paper_uuid"
    _setup_logger(logger, tmp_path, "other-run", None)  # the next job of the same process: no stale group
    assert "WANDB_RUN_GROUP" not in os.environ and os.environ["WANDB_RUN_ID"] == "other-run"
    long_id = "x" * 100
    assert wandb_run_id(long_id) == wandb_run_id(long_id) and len(wandb_run_id(long_id)) <= 64
    assert wandb_run_id(long_id) != wandb_run_id("x" * 99 + "y")


# ------------------------------------------------------------------------------------------ the launcher configs
def test_slurm_launcher_config_takes_the_cluster_values():
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=acct",
                   "hydra.launcher.nodes=4", "hydra.launcher.gpus_per_node=8", "hydra.launcher.timeout_min=720"],
                  return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=False)
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert (launcher["partition"], launcher["account"], launcher["nodes"], launcher["gpus_per_node"],
            launcher["timeout_min"]) == ("gpu", "acct", 4, 8, 720)
    assert cfg.hydra.launcher.tasks_per_node == 8  # one process per GPU
    assert launcher["max_num_timeout"] > 0  # requeued on time limit (resume=auto continues)
    assert cfg.hydra.callbacks.distributed_env._target_ == "runner.distributed.DistributedEnvCallback"
    local = compose(["hydra/launcher=local"], return_hydra_config=True).hydra.launcher
    assert local._target_.endswith("submitit_launcher.LocalLauncher")


def test_a_slurm_task_gets_torch_distributed_variables():
    from types import SimpleNamespace

    from runner.distributed import export_torch_env, submitit_torch_env

    def task(rank, local):
        return SimpleNamespace(num_tasks=32, num_nodes=4, global_rank=rank, local_rank=local, job_id="777_3",
                               hostnames=["gpu-a01", "gpu-a02", "gpu-a03", "gpu-a04"], cluster="slurm")

    first, last = submitit_torch_env(task(0, 0)), submitit_torch_env(task(31, 7))
    assert first["MASTER_ADDR"] == last["MASTER_ADDR"] == "gpu-a01"
    assert first["MASTER_PORT"] == last["MASTER_PORT"]  # every task of the job agrees, with no communication
    assert (last["RANK"], last["WORLD_SIZE"], last["LOCAL_RANK"], last["LOCAL_WORLD_SIZE"]) == ("31", "32", "7", "8")
    one = SimpleNamespace(num_tasks=1, num_nodes=1, global_rank=0, local_rank=0, job_id="5", hostnames=["h"],
                          cluster="slurm")
    assert submitit_torch_env(one) is None
    env: dict = {}
    assert export_torch_env(first, env) == first and env["RANK"] == "0"
    assert export_torch_env(last, {"RANK": "3", "WORLD_SIZE": "4"}) == {}  # a launcher inside the job wins


def test_slurm_config_values_reach_the_sbatch_script(tmp_path, monkeypatch):
    """The values of configs/hydra/launcher/slurm.yaml, passed to submitit the way hydra-submitit-launcher passes them
    (base keys as they are, the others prefixed ``slurm_``), give the expected ``#SBATCH`` lines. (submitit only
    checks that an ``srun`` exists: a stub stands in for it.)"""
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    (tmp_path / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    cfg = compose(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.account=acct",
                   "hydra.launcher.nodes=4", "hydra.launcher.timeout_min=720", f"hydra.sweep.dir={tmp_path}/sweep"],
                  return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    sbatch = executor._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--partition=gpu", "--account=acct", "--nodes=4", "--gpus-per-node=8", "--ntasks-per-node=8",
                 "--time=720", "--signal=USR2@300"):
        assert f"#SBATCH {line}\n" in sbatch, line


def test_submitting_to_slurm_without_slurm_says_so_in_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    assert main(["run", "uuid", "--launcher", "slurm"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: sbatch not found") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------- failing jobs
def test_a_failing_job_does_not_stop_the_multirun(tmp_path):
    """An lr sweep where one lr is invalid (fails its check) and one diverges (NaN at step 2): both are noted as
    failed with their reason, the good lr still runs and writes its record into its folder of the sweep, and the
    process ends with exit code 1 and a summary naming the failed jobs."""
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT, TINY_RUN_OVERRIDES

    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MORA_DEBUG", None)
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "-m", "adapter=fft", "lr=-1,1e30,1e-3",
                           *TINY_RUN_OVERRIDES, "trainer.max_steps=2", f"hydra.sweep.dir={sweep}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    from tests.conftest import compose

    bad, nan, good = (str(compose(["adapter=fft", f"lr={lr}", *TINY_RUN_OVERRIDES, "trainer.max_steps=2"]).run_id)
                      for lr in ("-1", "1e30", "1e-3"))
    lines = proc.stderr.splitlines()
    assert f"failed: {bad}: lr must be a positive finite number, got lr=-1" in lines
    assert any(l.startswith(f"failed: {nan}: training loss became nan at step 2") for l in lines), proc.stderr
    assert lines[-1].startswith(f"error: 2 jobs of the sweep failed ({bad}, {nan}); the others completed")
    notes = {p.name: json.loads(p.read_text()) for p in (sweep / "failed").iterdir()}
    assert sorted(notes) == sorted([f"{bad}.json", f"{nan}.json"])
    assert notes[f"{bad}.json"]["overrides"][:2] == ["adapter=fft", "lr=-1"]
    record = json.loads((sweep / good / f"{good}.json").read_text())  # the run's record in the run's folder
    assert record["status"] == "completed" and record["lr"] == 1e-3
    assert (sweep / good / "train.log").read_text().count(f"{good}: char_acc=") == 1

"""``python train.py …`` as a user runs it: bad input → one-line error, non-zero exit, nothing already written
changed; a NaN loss stops the run, keeps the last good checkpoint and writes no record; a good run prints one
summary line and writes its record."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, TINY_RUN_OVERRIDES

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "runner"


def train(tmp_path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MORA_DEBUG", None)
    cmd = [sys.executable, str(REPO_ROOT / "train.py"), f"output_dir={tmp_path}/outputs/${{run_id}}",
           f"results_dir={tmp_path}/results", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``error: …`` line of stderr (asserting there is exactly one and no traceback)."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


BAD_INPUTS = {
    "r_zero": (["r=0"], "r must be a positive integer, got r=0"),
    "r_negative": (["r=-8"], "got r=-8"),
    "r_not_integer": (["r=2.5"], "r must be a positive integer, got r=2.5"),
    "r_not_number": (["r=abc"], "got r='abc'"),
    "lr_negative": (["lr=-1e-3"], "lr must be a positive finite number, got lr=-0.001"),
    "unknown_adapter": (["adapter=prefix_tuning"],
                        "unknown adapter 'prefix_tuning'; valid adapter options: asylora, dora, fft, hira, lora, loraplus, miss, mora"),
    "unknown_key": (["trainer.bogus=1"], "unknown config key 'trainer.bogus'"),
    "empty_dataset": (["task.n_pairs=0"], "empty dataset (task.n_pairs=0)"),
    "empty_file": ([f"task.data_path={FIXTURES / 'uuid_empty.jsonl'}", "task.n_pairs=null"], "empty dataset"),
    "missing_field": ([f"task.data_path={FIXTURES / 'uuid_missing_value.jsonl'}"],
                      "uuid_missing_value.jsonl:2 has no 'value' field"),
    "resume_without_checkpoint": (["resume=true"], "has no complete checkpoint to resume from"),
    # found before Hydra makes the run folder (they used to surface after it, or after training)
    "late_mora_type": (["adapter.mora_type=7"], "adapter.mora_type=7: unknown mora_type 7"),
    "late_batch_size": (["trainer.batch_size=0"], "trainer.batch_size must be a positive integer, got 0"),
    "late_output_dir_proc": (["output_dir=/proc/mora_run"], "output_dir=/proc/mora_run cannot be written"),
    "late_output_dir_under_a_file": ([f"output_dir={FIXTURES / 'uuid_empty.jsonl'}/run"],
                                     f"cannot be a folder: {FIXTURES / 'uuid_empty.jsonl'} is a file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_line_and_damages_nothing(tmp_path, case):
    args, expected = BAD_INPUTS[case]
    results = tmp_path / "results"
    results.mkdir()
    existing = results / "uuid-tiny-mora-r8-rope-lr3e-3-s42.json"
    existing.write_text('{"an": "earlier record"}')
    proc = train(tmp_path, "logger=none", *args, timeout=60)
    assert expected in error_line(proc)
    assert existing.read_text() == '{"an": "earlier record"}'
    assert [p.name for p in results.iterdir()] == [existing.name]
    if case.startswith(("r_", "lr_", "unknown_", "resume_", "late_")):  # caught before Hydra makes the run folder
        assert not (tmp_path / "outputs").exists()


def test_nan_loss_stops_keeps_last_good_checkpoint_and_writes_no_record(tmp_path):
    proc = train(tmp_path, *TINY_RUN_OVERRIDES, "adapter=fft", "lr=1e30", "trainer.save_steps=1", "run_id=nan")
    assert "training loss became nan at step 2" in error_line(proc)
    out = tmp_path / "outputs" / "nan"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # step 1's loss was finite
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (tmp_path / "results").exists() and not (out / "record.json").exists()


def test_good_run_keeps_everything_in_hydras_run_folder(tmp_path):
    """``hydra.run.dir`` is the run's one folder: checkpoints, adapter, record, Hydra's files and the log (which holds
    the run's output: the parameter counts and the summary line); nothing is written anywhere else."""
    from tests.conftest import compose

    overrides = [*TINY_RUN_OVERRIDES, "adapter=mora", "r=8", "trainer.max_steps=2"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("MORA_DEBUG", None)
    run_dir = tmp_path / "my_run"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = str(compose(overrides).run_id)  # uuid-tiny-mora-r8-rope-lr3e-3-s42-<config hash>
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{run_id}: char_acc=") and f"record {run_dir}/{run_id}.json" in summary
    assert "trainable" in proc.stdout and "LoRA at r=8" in proc.stdout  # the parameter counts are printed
    assert "2/2" in proc.stderr  # the Trainer's progress bar
    record = json.loads((run_dir / f"{run_id}.json").read_text())
    assert record["params"]["lora_equivalent"] > 0 and record["mora_type"] == "rope"
    assert record["output_dir"] == str(run_dir)
    assert [p.name for p in tmp_path.iterdir()] == ["my_run"]
    assert {"checkpoint-2", "adapter", "record.json", ".hydra", "train.log"} <= {p.name for p in run_dir.iterdir()}
    log = (run_dir / "train.log").read_text()
    assert summary in log and "LoRA at r=8" in log


def test_the_readme_command_leaves_the_checkout_clean():
    """The README's first command writes its record into its own folder under outputs/ (ignored by git), never into
    the committed results/runs."""
    import shutil
    import uuid

    def status() -> str:
        return subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=REPO_ROOT,
                              capture_output=True, text=True, check=True).stdout

    run_id = f"pytest-readme-{uuid.uuid4().hex[:8]}"
    before = status()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.run([sys.executable, "train.py", "task=uuid", "adapter=mora", "r=256", *TINY_RUN_OVERRIDES,
                               "trainer.max_steps=1", "trainer.save_steps=1", f"run_id={run_id}"],
                              cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert (REPO_ROOT / "outputs" / run_id / f"{run_id}.json").is_file()
        assert not (REPO_ROOT / "results" / "runs" / f"{run_id}.json").exists()
        assert status() == before
    finally:
        shutil.rmtree(REPO_ROOT / "outputs" / run_id, ignore_errors=True)


def test_help_is_the_applications_page(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = proc.stdout
    for expected in ("== Commands ==", "python train.py -m", "torchrun --nproc_per_node 2 train.py",
                     "== Configuration groups ==", "docs/RUNNING.md",
                     "adapter: " + ", ".join(sorted(p.stem for p in (REPO_ROOT / "configs" / "adapter").glob("*.yaml")))):
        assert expected in page, expected
    assert "powered by Hydra" not in page and list(tmp_path.iterdir()) == []


def test_a_bad_invocation_answers_before_torch_is_imported(tmp_path):
    """The one-line errors of bad input come before the heavy imports (config resolution reads moRA/types.py alone)."""
    argv = [str(REPO_ROOT / "train.py"), "r=0", f"output_dir={tmp_path}/out", f"results_dir={tmp_path}/results"]
    code = (f"import runpy, sys; sys.argv = {argv!r}\n"
            f"try:\n    runpy.run_path({str(REPO_ROOT / 'train.py')!r}, run_name='__main__')\n"
            "except SystemExit:\n    print('torch loaded:', 'torch' in sys.modules)\n")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert "r must be a positive integer" in result.stderr and "torch loaded: False" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == []

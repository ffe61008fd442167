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
                        "unknown adapter 'prefix_tuning'; valid adapter options: dora, fft, hira, lora, miss, mora"),
    "unknown_key": (["trainer.bogus=1"], "unknown config key 'trainer.bogus'"),
    "empty_dataset": (["task.n_pairs=0"], "empty dataset (task.n_pairs=0)"),
    "empty_file": ([f"task.data_path={FIXTURES / 'uuid_empty.jsonl'}", "task.n_pairs=null"], "empty dataset"),
    "missing_field": ([f"task.data_path={FIXTURES / 'uuid_missing_value.jsonl'}"],
                      "uuid_missing_value.jsonl:2 has no 'value' field"),
    "resume_without_checkpoint": (["resume=true"], "has no complete checkpoint to resume from"),
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
    if case.startswith(("r_", "lr_", "unknown_", "resume_")):  # caught before Hydra makes the run folder
        assert not (tmp_path / "outputs").exists()


def test_nan_loss_stops_keeps_last_good_checkpoint_and_writes_no_record(tmp_path):
    proc = train(tmp_path, *TINY_RUN_OVERRIDES, "adapter=fft", "lr=1e30", "trainer.save_steps=1", "run_id=nan")
    assert "training loss became nan at step 2" in error_line(proc)
    out = tmp_path / "outputs" / "nan"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1"]  # step 1's loss was finite
    assert (out / "checkpoint-1" / "trainer_state.json").is_file()
    assert not (tmp_path / "results").exists() and not (out / "record.json").exists()


def test_good_run_prints_one_summary_line_and_writes_the_record(tmp_path):
    proc = train(tmp_path, *TINY_RUN_OVERRIDES, "adapter=mora", "r=8", "trainer.max_steps=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_id = "uuid-tiny-mora-r8-rope-lr3e-3-s42"
    summary = proc.stdout.strip().splitlines()[-1]
    assert summary.startswith(f"{run_id}: char_acc=") and f"record {tmp_path}/results/{run_id}.json" in summary
    assert "trainable" in proc.stdout and "LoRA at r=8" in proc.stdout  # the parameter counts are printed
    assert "2/2" in proc.stderr  # the Trainer's progress bar
    record = json.loads((tmp_path / "results" / f"{run_id}.json").read_text())
    assert record["params"]["lora_equivalent"] > 0 and record["mora_type"] == "rope"
    assert (tmp_path / "outputs" / run_id / ".hydra" / "config.yaml").is_file()  # Hydra's run folder = output_dir

"""``scripts/evaluate.py``: Hydra-style overrides like train.py, an application help page, one-line errors, and a
dated evaluation entry beside the training run's metrics."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, TINY_RUN_OVERRIDES, compose

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import evaluate as evaluate_script  # noqa: E402


@pytest.fixture(scope="module")
def uuid_run(tmp_path_factory):
    from runner.run import run_experiment

    tmp = tmp_path_factory.mktemp("uuid_run")
    cfg = compose([f"output_dir={tmp}/run", f"results_dir={tmp}/results", *TINY_RUN_OVERRIDES, "adapter=lora", "r=4",
                   "trainer.max_steps=2", "trainer.eval_steps=0", "task.eval_n=4"])
    summary = run_experiment(cfg)
    return summary.output_dir, summary.record_path


def test_help_is_an_application_help_page():
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "evaluate.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith("Evaluate a saved run")
    for piece in ("usage: python scripts/evaluate.py run=", "tasks=[", "task.<key>=", "results_dir=", "evaluations"):
        assert piece in proc.stdout


def test_arguments_follow_hydras_override_grammar():
    args = evaluate_script.parse_args(["run=out/x", "tasks=[gsm8k,math]", "task.eval.limit=5",
                                       "+task.eval.stop='a,b'", "~task.eval.shots", "results_dir=res"])
    assert args == {"run": "out/x", "tasks": ["gsm8k", "math"], "results_dir": "res",
                    "overrides": ["task.eval.limit=5", "+task.eval.stop='a,b'", "~task.eval.shots"]}
    assert evaluate_script.parse_args(["run=out/x", "tasks=gsm8k"])["tasks"] == ["gsm8k"]


@pytest.mark.parametrize("argv, message", [
    (["run"], "'run' is not a key=value override"),
    (["run=x", "model.name=y"], "unknown argument 'model.name=y'"),
    (["tasks=[math]"], "run=<output folder of a train.py run> is required"),
    (["run=x", "task.eval_n=1,2"], "a sweep"),
])
def test_bad_arguments_are_one_line(capsys, argv, message):
    assert evaluate_script.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_task_overrides_change_the_recorded_task_and_a_missing_key_names_the_nearest(uuid_run, capsys):
    out, results_record = uuid_run
    training = json.loads(results_record.read_text())
    assert evaluate_script.main([f"run={out}", "task.eval_nn=2"]) == 1
    assert "has no task.eval_nn; did you mean task.eval_n?" in capsys.readouterr().err

    assert evaluate_script.main([f"run={out}", "task.eval_n=2"]) == 0
    stdout = capsys.readouterr().out
    assert "added evaluation" in stdout and "char_acc=" in stdout
    for path in (out / "record.json", results_record):
        record = json.loads(Path(path).read_text())
        assert record["final"] == training["final"]
        (entry,) = record["evaluations"]
        assert entry["overrides"] == ["task.eval_n=2"] and entry["tasks"] is None
        assert set(entry["metrics"]) == {"char_acc", "char_acc_tf", "exact_match"}
    samples = (Path(entry["samples_dir"]) / "uuid_samples.jsonl").read_text().splitlines()
    assert len(samples) == 2                                        # task.eval_n=2 took effect
    assert len((out / "samples" / "uuid_samples.jsonl").read_text().splitlines()) == 4   # the run's own samples stay

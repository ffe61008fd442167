"""The default command's loss curve is pinned: ``python train.py task=uuid adapter=mora r=256``, first 20 optimizer
steps, training loss within 1e-4 of ``tests/fixtures/runner/default_command_loss.json`` (as torchtune pins its
recipes). Any change to the data, the model, MoRA's forward/backward, the optimizer or the schedule shows here.

``trainer.max_steps=20`` does not change these steps: the default warms up linearly over its first 20 steps
(``trainer.warmup_steps=20``) whatever the total; ``logging_steps=1`` logs every step and ``task.eval_n`` only
shortens the final evaluation. After an intended change, regenerate the fixture and commit it with the change:

    python -m tests.runner.test_pinned_loss
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "runner" / "default_command_loss.json"
DEFAULT_COMMAND = ["task=uuid", "adapter=mora", "r=256"]
FIRST_20_STEPS = ["trainer.max_steps=20", "trainer.logging_steps=1", "task.eval_n=2", "logger=none"]
TOLERANCE = 1e-4


def first_20_losses(tmp_path: Path) -> list[float]:
    from runner.run import run_experiment
    from tests.conftest import compose

    cfg = compose([f"output_dir={tmp_path}/run", f"results_dir={tmp_path}/results", *DEFAULT_COMMAND,
                   *FIRST_20_STEPS])
    assert cfg.trainer.warmup_steps == 20 and cfg.trainer.lr_scheduler_type == "linear"   # see the docstring
    history = run_experiment(cfg).record["history"]
    return [p["train_loss"] for p in history if "train_loss" in p]


def test_default_command_first_20_losses_match_the_pinned_curve(tmp_path):
    pinned = json.loads(FIXTURE.read_text())
    losses = first_20_losses(tmp_path)
    assert len(losses) == len(pinned["train_loss"]) == 20
    worst = max(abs(a - b) for a, b in zip(losses, pinned["train_loss"]))
    assert worst <= TOLERANCE, f"loss curve moved by {worst:.2e}: {losses}"
    assert losses[-1] < losses[0]   # and it is a curve that learns


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        values = first_20_losses(Path(tmp))
    FIXTURE.write_text(json.dumps({"command": "python train.py " + " ".join(DEFAULT_COMMAND + FIRST_20_STEPS),
                                   "regenerate": "python -m tests.runner.test_pinned_loss",
                                   "train_loss": values}, indent=1) + "\n")
    print(f"wrote {FIXTURE}: {values}")

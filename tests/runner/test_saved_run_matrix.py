"""The cross-method matrix: every adapter through the runner — train 3 steps, save, reload the saved run folder,
re-evaluate — gives the trained model back (same logits) and the same metrics as the run that saved it.

One line per adapter in ``CASES`` (id, overrides); add an adapter by adding its line. ReLoRA / ReMoRA merge midway, so the saved folder's ``adapter/`` holds only the last cycle's adapter (and, for ReMoRA, a type other than
the one its ``adapter_config.json`` names): the merged base weights must come back from the run folder too.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from moRA import MORA_TYPES
from runner.run import run_experiment
from runner.saved_run import evaluate_saved_run, load_saved_run
from tests.conftest import TINY_RUN_OVERRIDES

# a merge after step 2 of 4 (cosine_restarts needs a multiple of merge_every; the re-warmup ends before the next merge)
RESTART_AT_STEP_2 = ["trainer.max_steps=4", "adapter.restart.merge_every=2", "adapter.restart.restart_warmup=1"]
CASES: list[tuple[str, list[str]]] = [
    ("fft", ["adapter=fft"]),
    ("lora", ["adapter=lora", "r=4"]),
    ("loraplus", ["adapter=loraplus", "r=4"]),
    ("asylora", ["adapter=asylora", "r=4"]),
    ("dora", ["adapter=dora", "r=4"]),
    ("hira", ["adapter=hira", "r=4"]),
    ("miss", ["adapter=miss", "r=4"]),
    *[(f"mora_{t}", ["adapter=mora", "r=8", f"adapter.mora_type={t}"]) for t in MORA_TYPES],
    ("relora", ["adapter=relora", "r=4", *RESTART_AT_STEP_2]),
    ("remora", ["adapter=remora", "r=8", *RESTART_AT_STEP_2]),   # sharing, then contiguous
]
# 3 steps, evaluation (4 pairs) only at the end, no intermediate checkpoint; a large lr so that every step moves the model
MATRIX_OVERRIDES = [*TINY_RUN_OVERRIDES, "trainer.max_steps=3", "trainer.eval_steps=0", "trainer.save_steps=100",
                    "task.eval_n=4", "lr=0.02"]
PROBE = torch.tensor([list(b"0123-abcd:ef45")])


class FinalLogits(TrainerCallback):
    """Keeps the trained model's logits on ``PROBE`` at the end of training."""

    logits: torch.Tensor | None = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        was_training = model.training
        model.eval()
        with torch.no_grad():
            self.logits = model(input_ids=PROBE).logits.clone()
        model.train(was_training)


@pytest.mark.parametrize("overrides", [c[1] for c in CASES], ids=[c[0] for c in CASES])
def test_saved_run_reloads_and_reevaluates_to_the_recorded_metrics(compose_run_config, overrides, capsys):
    cfg = compose_run_config(*MATRIX_OVERRIDES, *overrides)
    probe = FinalLogits()
    summary = run_experiment(cfg, extra_callbacks=[probe])
    out = summary.output_dir
    recorded = json.loads(summary.record_path.read_text())

    model, _ = load_saved_run(out)
    with torch.no_grad():
        reloaded = model(input_ids=PROBE).logits
    assert torch.allclose(reloaded, probe.logits, atol=1e-5, rtol=0), (reloaded - probe.logits).abs().max()

    metrics = evaluate_saved_run(out)
    expected = {k: v for k, v in recorded["final"].items() if k != "train_loss"}
    assert metrics == pytest.approx(expected, abs=1e-6)

    # the training run's metrics stay; the re-evaluation is a dated entry beside them, in both record copies
    for path in (out / "record.json", summary.record_path):
        updated = json.loads(Path(path).read_text())
        assert updated["final"] == recorded["final"]
        (entry,) = updated["evaluations"]
        assert entry["metrics"] == pytest.approx(expected, abs=1e-6) and entry["date"] and entry["tasks"] is None
    assert "added evaluation" in capsys.readouterr().out

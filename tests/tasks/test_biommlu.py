"""BioMMLU, the paper's third biomedicine task (Appendix C): MMLU's biomedicine subjects scored as a choice task of
the AdaptLLM suite; named in task.eval.tasks, not part of the suite's default list."""
from __future__ import annotations

from pathlib import Path

import pytest

from tasks.evaluation.adaptllm import BIOMMLU_SUBJECTS, biommlu_rows, evaluate_suite, suite_tasks

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "adaptllm" / "medicine-tasks"


def test_biommlu_is_named_only_and_takes_the_biomedicine_subjects():
    assert "biommlu" not in [t.key for t in suite_tasks("biomed")[1]]
    assert [t.key for t in suite_tasks("biomed", ["pubmedqa", "usmle", "biommlu", "rct"])[1]] == [
        "pubmedqa", "usmle", "biommlu", "rct"]
    rows = biommlu_rows(str(FIX), "task.eval.data_dir")
    assert len(rows) == 2 and "abstract algebra" not in " ".join(rows["input"])   # other MMLU subjects dropped
    assert rows[0]["input"].startswith("The following is a multiple choice question about anatomy.")
    assert rows[0]["options"] == ["Femur", "Humerus", "Tibia", "Ulna"] and rows[0]["gold_index"] == 1
    assert set(BIOMMLU_SUBJECTS) >= {"anatomy", "medical_genetics", "professional_medicine"}


def test_the_papers_biomed_suite_scores_biommlu(tmp_path):
    from runner.models import build_model, load_model_config

    model, tok = build_model(load_model_config("tiny"), 0)
    metrics = evaluate_suite(model.eval(), tok, "biomed", {"tasks": ["biommlu", "rct"], "data_dir": str(FIX)},
                             tmp_path)
    assert 0.0 <= metrics["biomed/biommlu"] <= 1.0
    assert metrics["biomed_avg"] == pytest.approx((metrics["biomed/biommlu"] + metrics["biomed/rct"]) / 2)
    assert (tmp_path / "biomed_biommlu.jsonl").read_text().count("\n") == 2

"""MMLU 0-shot / k-shot accuracy through lm-eval (stock ``mmlu`` or the repository's ``mora_mmlu`` on local files)."""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

from tasks.base import TaskDataError
from tasks.data_source import config_value, load_rows, require_hub_dataset, single_local_file
from tasks.evaluation.eval_model import evaluation_model
from tasks.evaluation.lm_eval_runner import (
    load_task_template, make_lm, micro_average, run_tasks, with_local_data, write_samples,
)

LETTERS = "ABCD"
MMLU_FIELDS = ("question", "subject", "choices", "answer")


def check_mmlu_rows(rows, what: str) -> list[str]:
    """Subjects of ``rows`` (cais/mmlu schema); a malformed row is an error naming it (never mis-scored)."""
    subjects = []
    for i, row in enumerate(rows):
        missing = [f for f in MMLU_FIELDS if row.get(f) is None]
        if missing:
            raise TaskDataError(f"{what}: row {i} lacks field(s) {missing}")
        if not isinstance(row["choices"], list) or len(row["choices"]) != 4:
            raise TaskDataError(f"{what}: row {i} must have exactly 4 choices, has {row['choices']!r}")
        if not isinstance(row["answer"], int) or not 0 <= row["answer"] < 4:
            raise TaskDataError(f"{what}: row {i} has answer {row['answer']!r}, expected an int in 0..3")
        if not str(row["question"]).strip():
            raise TaskDataError(f"{what}: row {i} has an empty question")
        if row["subject"] not in subjects:
            subjects.append(row["subject"])
    return subjects


def local_mmlu_specs(test_path: str, dev_path: str | None) -> list[dict]:
    """One ``mora_mmlu`` task per subject of the local test file (few-shot examples: dev rows of that subject)."""
    test_file = single_local_file(test_path, "MMLU test data", "task.eval.mmlu.test_path")
    dev_file = single_local_file(dev_path, "MMLU dev data", "task.eval.mmlu.dev_path") if dev_path else None
    subjects = check_mmlu_rows(load_rows(hf_name=None, data_path=test_file, what="MMLU test data",
                                         key="task.eval.mmlu.test_path"), "MMLU test data")
    if dev_file:
        check_mmlu_rows(load_rows(hf_name=None, data_path=dev_file, what="MMLU dev data",
                                  key="task.eval.mmlu.dev_path"), "MMLU dev data")
    template = load_task_template("mora_mmlu")
    specs = []
    for subject in subjects:
        spec = with_local_data(template, test_file, dev_file, task_name=f"mora_mmlu_{subject}")
        spec["process_docs"] = _subject_filter(subject)
        spec["description"] = f"The following are multiple choice questions (with answers) about " \
                              f"{subject.replace('_', ' ')}.\n\n"
        if not dev_file:
            spec.pop("fewshot_split", None)
        specs.append(spec)
    return specs


def _subject_filter(subject: str):
    def keep_subject(dataset):
        return dataset.filter(lambda row: row["subject"] == subject)
    return keep_subject


def _describe(sample: dict) -> dict:
    lls = [float(r[0]) for r in sample.get("filtered_resps", [])]
    pred = max(range(len(lls)), key=lambda i: (lls[i], -i)) if lls else None   # ties → first letter
    gold = sample["doc"]["answer"]
    prompt = sample["arguments"][0][0] if sample.get("arguments") else None
    return {"doc_id": sample.get("doc_id"), "subject": sample["doc"].get("subject"), "prompt": prompt,
            "loglikelihoods": lls, "predicted": LETTERS[pred] if pred is not None else None,
            "gold": LETTERS[gold], "correct": bool(sample.get("acc", pred == gold))}


def evaluate_mmlu(model, tokenizer, cfg: Mapping, output_dir: Path | None) -> dict[str, float]:
    mmlu_cfg = config_value(cfg, "mmlu", {})
    shots = [int(k) for k in config_value(cfg, "num_fewshot", [0, 5])]
    source = config_value(mmlu_cfg, "source", "auto")
    test_path = config_value(mmlu_cfg, "test_path")
    if source not in ("auto", "local", "lm_eval"):
        raise ValueError(f"task.eval.mmlu.source={source!r} must be auto, local or lm_eval")
    local = source == "local" or (source == "auto" and test_path)
    if local and not test_path:
        raise TaskDataError("MMLU: task.eval.mmlu.source=local needs task.eval.mmlu.test_path (cais/mmlu schema)")
    if not local:
        require_hub_dataset("cais/mmlu", "abstract_algebra", "test", "MMLU (lm-eval's mmlu reads cais/mmlu)",
                            "task.eval.mmlu.test_path")
    specs = local_mmlu_specs(test_path, config_value(mmlu_cfg, "dev_path")) if local else ["mmlu"]
    limit = config_value(cfg, "limit")
    results = {}
    with evaluation_model(model, config_value(cfg, "merge", "copy")) as eval_model:
        lm = make_lm(eval_model, tokenizer, batch_size=int(config_value(cfg, "batch_size", 8)),
                     max_length=config_value(cfg, "max_length"))
        for k in shots:
            metrics, samples = run_tasks(lm, specs, num_fewshot=k, limit=limit, include_defaults=not local)
            leaf = [t for t in samples if samples[t]]
            results[f"mmlu_{k}shot"] = micro_average(metrics, samples, leaf, "acc")
            if output_dir is not None:
                write_samples(Path(output_dir) / f"mmlu_{k}shot.jsonl",
                              (_describe(s) for t in leaf for s in samples[t]))
    return results

"""Evaluate a finished run again (or on more suites) from its output folder, and append the metrics to its record.

A run folder (``output_dir`` of ``train.py``) holds ``record.json`` (a copy of the result record, whose ``config`` is
the resolved Hydra config), and either ``adapter/`` (PEFT adapter, safetensors) or ``model/`` (full fine-tuning,
safetensors). ``load_saved_run`` rebuilds the base model from the recorded model config and seed
(``runner.models.build_model``), loads the adapter with PEFT (``import moRA`` registers MoRA) and merges it
(``merge_and_unload``), or loads the full model. ``evaluate_saved_run`` builds the recorded task with optional
``task.*`` overrides, restricts it to ``tasks`` (suites / shots / AdaptLLM tasks, see ``select_suites``), evaluates,
writes samples to ``<run>/samples/`` and rewrites both record copies atomically with the new ``final`` metrics.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

RECORD_NAME = "record.json"


class SavedRunError(ValueError):
    """A run folder that cannot be evaluated. Message: one line naming the folder and the problem."""


def read_run_record(run_dir: str | Path) -> dict[str, Any]:
    from runner.record import RecordError, load_record

    path = Path(run_dir) / RECORD_NAME
    if not path.is_file():
        raise SavedRunError(f"{run_dir}: no {RECORD_NAME} (not the output folder of a completed train.py run)")
    try:
        return load_record(path)
    except RecordError as exc:
        raise SavedRunError(str(exc)) from None


def load_saved_run(run_dir: str | Path, record: dict[str, Any] | None = None):
    """``(model, tokenizer)`` of a run folder: the trained model, adapters merged, in eval mode."""
    from runner.models import build_model

    run_dir = Path(run_dir)
    record = record or read_run_record(run_dir)
    model_cfg = record["config"].get("model")
    if not model_cfg:
        raise SavedRunError(f"{run_dir}: the record's config has no model section")
    adapter_dir, full_dir = run_dir / "adapter", run_dir / "model"
    if adapter_dir.is_dir():
        import moRA  # noqa: F401  (registers the MORA PEFT type)
        from peft import PeftModel

        base, tokenizer = build_model(model_cfg, int(record["seed"]))
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False).merge_and_unload()
    elif full_dir.is_dir():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(full_dir), use_safetensors=True, trust_remote_code=False)
        try:   # the tokenizer saved next to the weights (train.py saves it)
            tokenizer = AutoTokenizer.from_pretrained(str(full_dir), local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError):
            _, tokenizer = build_model(model_cfg, int(record["seed"]), device="meta") \
                if model_cfg.get("source") == "scratch" else build_model(model_cfg, int(record["seed"]))
    else:
        raise SavedRunError(f"{run_dir}: neither adapter/ nor model/ found (weights of the run are missing)")
    model.eval()
    return model, tokenizer


def select_suites(task_cfg: dict[str, Any], tasks: Sequence[str] | None) -> dict[str, Any]:
    """A copy of ``task_cfg`` restricted to ``tasks``:
    math → ``eval.suites`` (gsm8k, math, lm_eval:<name>); instruct → ``eval.num_fewshot`` from names like
    ``mmlu_5shot`` (or plain integers); continual_pretrain → ``eval.tasks`` (AdaptLLM task keys). Other tasks accept
    no selection."""
    cfg = copy.deepcopy(task_cfg)
    if not tasks:
        return cfg
    name = cfg.get("name")
    cfg.setdefault("eval", {})
    cfg["eval"] = dict(cfg["eval"] or {})
    if name == "math":
        bad = [t for t in tasks if t not in ("gsm8k", "math") and not str(t).startswith("lm_eval:")]
        if bad:
            raise SavedRunError(f"tasks: unknown math suite(s) {bad}; known: gsm8k, math, lm_eval:<lm-eval task>")
        cfg["eval"]["suites"] = list(tasks)
    elif name == "instruct":
        shots = []
        for t in tasks:
            text = str(t)
            digits = text.removeprefix("mmlu_").removesuffix("shot")
            if not digits.isdigit():
                raise SavedRunError(f"tasks: {t!r} is not mmlu_<k>shot or an integer number of shots")
            shots.append(int(digits))
        cfg["eval"]["num_fewshot"] = shots
    elif name == "continual_pretrain":
        from tasks.evaluation.adaptllm import suite_tasks

        cfg["eval"]["tasks"] = [str(t).split("/")[-1] for t in tasks]
        suite_tasks(cfg.get("domain", "biomed"), cfg["eval"]["tasks"])   # unknown names: one-line ValueError
    else:
        raise SavedRunError(f"tasks=... selects suites of math, instruct or continual_pretrain runs, not {name!r}")
    return cfg


def _apply_overrides(task_cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf

    if not overrides:
        return task_cfg
    bad = [o for o in overrides if not o.startswith("task.")]
    if bad:
        raise SavedRunError(f"only task.* overrides are accepted, got {bad}")
    merged = OmegaConf.merge(OmegaConf.create({"task": task_cfg}), OmegaConf.from_dotlist(list(overrides)))
    return OmegaConf.to_container(merged, resolve=True)["task"]


def evaluate_saved_run(run_dir: str | Path, tasks: Sequence[str] | None = None, overrides: Sequence[str] = (),
                       results_dir: str | Path | None = None) -> dict[str, float]:
    """Evaluate the run in ``run_dir``; update ``final`` in ``<run>/record.json`` and in the results-folder copy
    (``results_dir`` or the recorded ``results_dir``) when it exists. Returns the new metrics."""
    from runner.record import write_json_atomic, write_record
    from tasks import build_task

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    task_cfg = select_suites(_apply_overrides(dict(record["config"]["task"]), overrides), tasks)
    task = build_task(task_cfg)
    model, tokenizer = load_saved_run(run_dir, record)
    samples_dir = run_dir / "samples"
    metrics = task.evaluate(model, tokenizer, samples_dir)
    updated = dict(record)
    updated["final"] = {**record["final"], **{k: float(v) for k, v in metrics.items()}}
    updated["samples_dir"] = str(samples_dir)
    results_dir = Path(results_dir) if results_dir else Path(str(record["config"].get("results_dir", "results/runs")))
    if (results_dir / f"{record['run_id']}.json").is_file():
        write_record(updated, results_dir)
    from runner.record import validate_record

    validate_record(updated, where=str(run_dir / RECORD_NAME))
    write_json_atomic(updated, run_dir / RECORD_NAME)
    return metrics

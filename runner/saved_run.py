"""Evaluate a finished run again (or on more suites) from its output folder, and add the result to its record.

A run folder (``output_dir`` of ``train.py``) holds ``record.json`` (a copy of the result record, whose ``config`` is
the resolved Hydra config) and either ``adapter/`` (PEFT adapter, safetensors) or ``model/`` (full fine-tuning,
safetensors). A ReLoRA / ReMoRA run also holds its restart state (``restart_state.json``: merges done, the MoRA type
every layer ended with; ``restart_base_weights.safetensors``: the base weights with every merged update): its
``adapter/`` is only the last cycle's adapter, and its ``adapter_config.json`` names the type the cycle started from.

``load_saved_run`` rebuilds the model the run ended with: the base from the recorded model config and seed
(``runner.models.build_model``), the adapter with PEFT (``import moRA`` registers MoRA), then the restart state on
top (types and merged base weights, ``moRA.restart.Restarter.load``); or the full model. ``evaluate_saved_run``
builds the recorded task with optional ``task.*`` overrides, restricts it to ``tasks`` (see ``select_suites``),
evaluates the model exactly as the training run's final evaluation did, writes samples to a new
``<run>/evaluations/<date>/`` folder and appends ``{"date", "metrics", "tasks", "overrides", "samples_dir",
"git_commit"}`` to the record's ``evaluations`` (both copies, atomically). The training run's ``final`` metrics are
never replaced.
"""
from __future__ import annotations

import copy
import datetime as _dt
from pathlib import Path
from typing import Any, Sequence

from runner.checkpoints import RECORD_COPY_NAME as RECORD_NAME

EVALUATIONS_DIR = "evaluations"


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


def _restore_restart_state(model, run_dir: Path, record: dict[str, Any]) -> None:
    """Put a ReLoRA / ReMoRA run's merged base weights and final MoRA types onto the reloaded PEFT ``model``."""
    from moRA.restart import STATE_FILE, RestartConfig, Restarter

    restart_cfg = record["config"]["adapter"]["restart"]
    if not (run_dir / STATE_FILE).is_file():
        raise SavedRunError(f"{run_dir}: a {record['adapter']} run without {STATE_FILE}: the merged base weights "
                            "and the final adapter types cannot be rebuilt from adapter/ alone")
    try:
        Restarter(RestartConfig.from_mapping(restart_cfg, seed=int(record["seed"])), model).load(run_dir)
    except ValueError as exc:
        raise SavedRunError(f"{run_dir}: {' '.join(str(exc).split())}") from None


def load_saved_run(run_dir: str | Path, record: dict[str, Any] | None = None, merge: bool = False):
    """``(model, tokenizer)`` of a run folder: the model the run ended with, in eval mode. An adapter run gives the
    PEFT model as it was trained (``merge=True``: merged into a plain transformers model)."""
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
        model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
        if (record["config"].get("adapter") or {}).get("restart"):
            _restore_restart_state(model, run_dir, record)
        if merge:
            model = model.merge_and_unload()
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


def parse_overrides(overrides: Sequence[str]) -> list:
    """Hydra ``Override`` objects of ``key=value`` / ``+key=value`` / ``~key`` strings (Hydra's override grammar);
    ``SavedRunError`` (one line) for a string that is not one, or a sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([str(text)])
        except HydraException as exc:
            raise SavedRunError(f"{text!r} is not a key=value override ({str(exc).splitlines()[0]})") from None
        if override.is_sweep_override():
            raise SavedRunError(f"{text!r}: a sweep; evaluate one setting at a time")
        parsed.append(override)
    return parsed


def apply_task_overrides(task_cfg: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``task_cfg`` with ``task.<key>=<value>`` (change an existing key), ``+task.<key>=<value>`` (add one) and
    ``~task.<key>`` (delete) overrides applied, as Hydra applies them to train.py's config. Changing a key the recorded
    task config lacks fails in one line naming the nearest existing key (a silently added key would be read by
    nothing)."""
    import difflib

    from omegaconf import OmegaConf, open_dict

    cfg = OmegaConf.create({"task": task_cfg})
    absent = object()
    for override, text in zip(parse_overrides(overrides), overrides):
        key = override.key_or_group
        if not key.startswith("task."):
            raise SavedRunError(f"{text!r}: only task.* overrides change the evaluation")
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent, default=None)
        exists = OmegaConf.select(cfg, key, default=absent) is not absent
        if override.is_delete():
            if not exists:
                raise SavedRunError(f"{text!r}: the run's task config has no {key}")
            del node[leaf]
        elif override.is_add() or exists:
            with open_dict(cfg):
                OmegaConf.update(cfg, key, override.value(), merge=False, force_add=True)
        else:
            keys = [str(k) for k in node.keys()] if OmegaConf.is_dict(node) else []
            near = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.5)
            hint = f"did you mean {parent}.{near[0]}?" if near else f"the keys of {parent}: {', '.join(keys) or 'none'}"
            raise SavedRunError(f"{text!r}: the run's task config has no {key}; {hint}")
    return OmegaConf.to_container(cfg, resolve=True)["task"]


def _record_paths(run_dir: Path, record: dict[str, Any], results_dir: str | Path | None) -> list[Path]:
    """The run folder's record copy, and the results-folder record when it exists."""
    results_dir = Path(results_dir) if results_dir else Path(str(record["config"].get("results_dir", "results/runs")))
    paths = [run_dir / RECORD_NAME]
    if (results_dir / f"{record['run_id']}.json").is_file():
        paths.append(results_dir / f"{record['run_id']}.json")
    return paths


def evaluate_saved_run(run_dir: str | Path, tasks: Sequence[str] | None = None, overrides: Sequence[str] = (),
                       results_dir: str | Path | None = None) -> dict[str, float]:
    """Evaluate the run in ``run_dir``; append a dated entry to ``evaluations`` in ``<run>/record.json`` and in the
    results-folder record (``results_dir`` or the recorded one) when it exists. Returns the new metrics."""
    from runner.record import git_commit, load_record, validate_record, write_json_atomic
    from tasks import build_task

    run_dir = Path(run_dir)
    record = read_run_record(run_dir)
    task_cfg = select_suites(apply_task_overrides(dict(record["config"]["task"]), overrides), tasks)
    task = build_task(task_cfg)
    model, tokenizer = load_saved_run(run_dir, record)
    now = _dt.datetime.now(_dt.timezone.utc)
    samples_dir = run_dir / EVALUATIONS_DIR / now.strftime("%Y%m%dT%H%M%S%fZ")
    metrics = {k: float(v) for k, v in task.evaluate(model, tokenizer, samples_dir).items()}
    entry = {"date": now.isoformat(timespec="seconds"), "metrics": metrics,
             "tasks": None if not tasks else [str(t) for t in tasks], "overrides": [str(o) for o in overrides],
             "samples_dir": str(samples_dir), "git_commit": git_commit()}
    paths = _record_paths(run_dir, record, results_dir)
    for path in paths:
        current = record if path == run_dir / RECORD_NAME else load_record(path)
        updated = {**current, "evaluations": [*current.get("evaluations", []), entry]}
        validate_record(updated, where=str(path))
        write_json_atomic(updated, path)
    print(f"{record['run_id']}: added evaluation {entry['date']} to {', '.join(map(str, paths))} "
          f"(the training run's final metrics are unchanged)", flush=True)
    return metrics

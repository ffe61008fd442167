"""Run lm-eval (``lm_eval.simple_evaluate``) on an in-memory model and keep every sample for auditing.

- ``make_lm(model, tokenizer)``: ``lm_eval.models.huggingface.HFLM`` around the model (no copy, no reload).
- ``load_task_template(name)``: one of this repository's task YAMLs (``lm_eval_tasks/<name>.yaml``) as a dict whose
  ``!function mora_scorers.f`` entries are resolved to ``tasks.evaluation.lm_eval_tasks.mora_scorers.f``.
- ``with_local_data(cfg, test_file, fewshot_file=None)``: the same task reading a local JSON/JSONL/parquet file in
  the dataset's schema (absolute paths: lm-eval resolves relative ``data_files`` against the current directory).
- ``run_tasks(lm, specs, ...)``: ``simple_evaluate`` on task dicts (our YAMLs) and/or registered names (stock lm-eval
  tasks such as ``gsm8k``, ``minerva_math``, ``mmlu``), returning ``{task: {metric: value}}`` and the raw samples.
- ``write_samples(path, records)``: JSONL written to a temp file then moved into place.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml

TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
SCORERS_MODULE = "tasks.evaluation.lm_eval_tasks.mora_scorers"


class _TaskYamlLoader(yaml.SafeLoader):
    """SafeLoader plus lm-eval's ``!function module.name`` tag, resolved inside this package."""


def _function_constructor(loader: yaml.SafeLoader, node: yaml.Node):
    ref = loader.construct_scalar(node)
    module_name, _, attr = ref.rpartition(".")
    if module_name != "mora_scorers":
        raise ValueError(f"task YAML references !function {ref!r}; only mora_scorers.<name> is allowed")
    return getattr(importlib.import_module(SCORERS_MODULE), attr)


_TaskYamlLoader.add_constructor("!function", _function_constructor)


def load_task_template(name: str) -> dict[str, Any]:
    """The task dict of ``lm_eval_tasks/<name>.yaml`` (functions resolved)."""
    path = TASKS_DIR / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))
        raise ValueError(f"unknown repository lm-eval task {name!r}; known: {known}")
    with path.open() as fh:
        return yaml.load(fh, Loader=_TaskYamlLoader)


def _data_format(path: str) -> str:
    suffix = Path(path).suffix
    return {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(suffix, "json")


def with_local_data(cfg: dict[str, Any], test_file: str | os.PathLike, fewshot_file: str | os.PathLike | None = None,
                    task_name: str | None = None) -> dict[str, Any]:
    """A copy of task dict ``cfg`` that reads ``test_file`` (split "test") and optionally ``fewshot_file`` ("dev")."""
    out = dict(cfg)
    files = {"test": str(Path(test_file).resolve())}
    if fewshot_file is not None:
        files["dev"] = str(Path(fewshot_file).resolve())
    out["dataset_path"] = _data_format(files["test"])
    out.pop("dataset_name", None)
    out["dataset_kwargs"] = {"data_files": files}
    out["test_split"] = "test"
    if fewshot_file is not None:
        out["fewshot_split"] = "dev"
    if task_name:
        out["task"] = task_name
    return out


def make_lm(model, tokenizer, batch_size: int = 8, max_length: int | None = None):
    """HFLM over the in-memory ``model`` (put in eval mode by the caller)."""
    from lm_eval.models.huggingface import HFLM

    kwargs: dict[str, Any] = {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size}
    if max_length is not None:
        kwargs["max_length"] = max_length
    return HFLM(**kwargs)


def run_tasks(lm, specs: Sequence[dict | str], *, num_fewshot: int | None = None, limit: int | float | None = None,
              include_defaults: bool = False, gen_kwargs: dict | None = None, seed: int = 1234
              ) -> tuple[dict[str, dict[str, float]], dict[str, list[dict]]]:
    """``({task: {metric: value}}, {task: [lm-eval sample, ...]})`` of ``simple_evaluate`` on ``specs``.

    Metric keys drop lm-eval's ",<filter>" suffix when the filter is "none"; stderr entries are dropped.
    ``include_defaults``: also index lm-eval's own tasks (needed for registered names; ~10 s slower)."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_defaults=include_defaults, include_path=str(TASKS_DIR))
    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(specs), task_manager=manager, num_fewshot=num_fewshot, limit=limit,
        log_samples=True, bootstrap_iters=0, gen_kwargs=gen_kwargs, random_seed=seed, numpy_random_seed=seed,
        torch_random_seed=seed, fewshot_random_seed=seed,
    )
    metrics: dict[str, dict[str, float]] = {}
    for task, values in out["results"].items():
        row = {}
        for key, value in values.items():
            if "stderr" in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filt = key.partition(",")
            row[metric if filt in ("", "none") else f"{metric}_{filt}"] = float(value)
        metrics[task] = row
    return metrics, out.get("samples", {})


def micro_average(metrics: dict[str, dict[str, float]], samples: dict[str, list], tasks: Iterable[str],
                  metric: str = "acc") -> float:
    """``metric`` averaged over all samples of ``tasks`` (each task weighted by its number of samples)."""
    total, weight = 0.0, 0
    for task in tasks:
        n = len(samples.get(task, []))
        if n == 0:
            continue
        total += metrics[task][metric] * n
        weight += n
    if weight == 0:
        raise ValueError(f"no samples for tasks {list(tasks)}")
    return total / weight


def generation_of(sample: dict) -> str:
    """The (filtered) generated text of a generate_until sample."""
    resp = sample.get("filtered_resps", sample.get("resps"))
    while isinstance(resp, (list, tuple)):
        resp = resp[0] if resp else ""
    return str(resp)


def write_samples(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    """Write ``records`` as JSONL at ``path`` atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(record, ensure_ascii=False, default=str) + "\n" for record in records),
                   encoding="utf-8")
    os.replace(tmp, path)
    return path

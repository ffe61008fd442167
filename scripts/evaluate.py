"""Evaluate a saved run again and add the result to its record, as a dated entry beside the training run's metrics.

usage: python scripts/evaluate.py run=<output folder> [tasks=[a,b]] [task.<key>=<value> ...] [results_dir=<folder>]

  run=          the run's output folder (``output_dir`` of train.py: record.json, adapter/ or model/, and for
                ReLoRA/ReMoRA the restart state); the model it ended with is rebuilt and evaluated as the run's
                final evaluation did.
  tasks=[...]   which suites to run (default: the task's configured ones). math: gsm8k, math, lm_eval:<lm-eval task>;
                instruct: mmlu_0shot, mmlu_5shot (or shot counts); continual_pretrain: AdaptLLM task keys
                (pubmedqa, fpb, ...). uuid and pretrain take no selection.
  task.<key>=   change a value of the recorded task config (e.g. task.eval.limit=50, task.eval_n=100, a local
                data path); +task.<key>= adds a key, ~task.<key> deletes one. A key the recorded config lacks fails
                with the nearest existing one.
  results_dir=  where the results copy of the record lives (default: the recorded results_dir); updated when it
                exists.

Overrides follow Hydra's grammar, as for train.py (lists ``[a,b]``, quoting ``'a,b'``, ``null``). The metrics are
printed and appended to the record's ``evaluations`` (``{date, metrics, tasks, overrides, samples_dir,
git_commit}``) in ``<run>/record.json`` and the results copy; per-sample outputs go to
``<run>/evaluations/<date>/``. The training run's ``final`` metrics are never replaced. Bad input ends with a one-line
``error: …`` and exit code 1 (``MORA_DEBUG=1`` shows the traceback).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runner.console_noise import quiet_known_noise  # noqa: E402  (before anything imports bitsandbytes)

quiet_known_noise()
ARGUMENTS = ("run", "tasks", "results_dir")


def parse_args(argv: list[str]) -> dict:
    """``{"run", "tasks", "results_dir", "overrides"}`` from Hydra-style ``key=value`` arguments."""
    from runner.saved_run import parse_overrides

    values, overrides = {}, []
    for override, text in zip(parse_overrides(argv), argv):
        key = override.key_or_group
        if key.startswith("task."):
            overrides.append(text)
        elif key in ARGUMENTS and not override.is_delete():
            values[key] = override.value()
        else:
            raise ValueError(f"unknown argument {text!r}; expected run=, tasks=[...], results_dir=, task.<key>= "
                             "(see --help)")
    if not values.get("run"):
        raise ValueError("run=<output folder of a train.py run> is required (see --help)")
    tasks = values.get("tasks")
    if tasks is not None and not isinstance(tasks, list):
        tasks = [tasks]
    return {"run": str(values["run"]), "tasks": None if tasks is None else [str(t) for t in tasks],
            "results_dir": values.get("results_dir"), "overrides": overrides}


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    try:
        args = parse_args(argv)
        from runner.saved_run import evaluate_saved_run

        metrics = evaluate_saved_run(args["run"], args["tasks"], args["overrides"], args["results_dir"])
    except (ValueError, OSError) as exc:
        if os.environ.get("MORA_DEBUG"):
            raise
        print("error: " + " ".join(str(exc).split()), file=sys.stderr)
        return 1
    print(" ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

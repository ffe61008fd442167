"""Evaluate a saved run and append the metrics to its result record.

    python scripts/evaluate.py run=outputs/<run_id> [tasks=[gsm8k,math]] [task.eval.limit=50 ...] [results_dir=...]

``run``: the run's output folder (holds record.json and adapter/ or model/). ``tasks``: which suites to run (math:
gsm8k, math, lm_eval:gsm8k, lm_eval:minerva_math; instruct: mmlu_0shot, mmlu_5shot; continual_pretrain: AdaptLLM task
keys such as pubmedqa, fpb); default: the task's configured suites. ``task.*``: overrides of the recorded task
config (e.g. local data paths). Bad input ends with a one-line ``error: …`` and exit code 1.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str]) -> dict:
    from omegaconf import OmegaConf

    bad = [a for a in argv if "=" not in a]
    if bad:
        raise ValueError(f"arguments must be key=value, got {bad}")
    plain = [a for a in argv if not a.startswith("task.")]
    args = OmegaConf.to_container(OmegaConf.from_dotlist(plain)) if plain else {}
    unknown = sorted(set(args) - {"run", "tasks", "results_dir"})
    if unknown:
        raise ValueError(f"unknown argument(s) {unknown}; expected run=, tasks=[...], results_dir=, task.*=")
    if not args.get("run"):
        raise ValueError("run=<output folder of a train.py run> is required")
    tasks = args.get("tasks")
    if tasks is not None and not isinstance(tasks, list):
        tasks = [tasks]
    return {"run": args["run"], "tasks": tasks, "results_dir": args.get("results_dir"),
            "overrides": [a for a in argv if a.startswith("task.")]}


def main(argv: list[str]) -> int:
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

"""The CPU reproduction's two-phase sweeps: which runs are still missing, and the best lr of each method.

An experiment file ``configs/experiment/cpu/<name>.yaml`` holds a Hydra multirun grid in ``hydra.sweeper.params``
(phase 1: every lr, one seed). Phase 2 reruns each method at its best phase-1 lr with more seeds. The shell scripts
``scripts/reproduce_cpu_*.sh`` ask this module::

    python -m results_lib.cpu_sweeps missing cpu/uuid_lora            # number of phase-1 runs without a record
    python -m results_lib.cpu_sweeps best cpu/uuid_lora --seeds 1,2   # "r=8 lr=0.003 seed=1,2": methods lacking seeds

A record belongs to a grid point when its ``experiment`` is the file's name and its seed, adapter, r, lr and MoRA type
equal the point's (those the grid sets). The best lr is chosen on the sweep seed's runs only (so it does not move once phase 2 adds seeds), by the
task's metric (UUID: final greedy char accuracy; pretraining: val ppl), ties broken by lower final train loss.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml

from .grouping import choose_lr, final_metric
from .metrics import metric_spec
from .records import RunRecord, canonical_mora_type, load_records

REPO_ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT_DIR = REPO_ROOT / "configs" / "experiment"
PRIMARY_METRIC = {"uuid": "char_acc", "pretrain": "val_ppl"}


class SweepFileError(ValueError):
    """An experiment file that is missing or has no usable sweep grid. Message: one line."""


def _scalar(text: str) -> Any:
    """A grid value as Hydra's override parser reads it: int, float ("3e-3" too, unlike YAML 1.1), else YAML."""
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return yaml.safe_load(text)


def load_sweep(experiment: str, experiment_dir: Path = EXPERIMENT_DIR) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(base, grid)`` of ``configs/experiment/<experiment>.yaml``: ``base`` = its top-level seed/r (and the
    adapter override), ``grid`` = every point of ``hydra.sweeper.params`` as ``{override key: value}``."""
    path = experiment_dir / f"{experiment}.yaml"
    if not path.is_file():
        raise SweepFileError(f"experiment {experiment!r} not found ({path})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    params = ((data.get("hydra") or {}).get("sweeper") or {}).get("params")
    if not isinstance(params, dict) or not params:
        raise SweepFileError(f"experiment {experiment!r} has no hydra.sweeper.params grid")
    base = _file_base(data, experiment_dir)
    keys = list(params)
    values = [[_scalar(v) for v in str(params[key]).split(",")] for key in keys]
    return base, [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def _file_base(data: dict, experiment_dir: Path) -> dict[str, Any]:
    """The file's seed, r and group overrides, after those of the experiment files it includes first in its
    defaults list (``- /experiment/cpu/pretrain_long``), as Hydra composes them."""
    base: dict[str, Any] = {}
    for entry in data.get("defaults") or []:
        if isinstance(entry, str) and entry.startswith("/experiment/"):
            path = experiment_dir / f"{entry[len('/experiment/'):]}.yaml"
            if not path.is_file():
                raise SweepFileError(f"included experiment {entry!r} not found ({path})")
            base.update(_file_base(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, experiment_dir))
    for entry in data.get("defaults") or []:
        for group in ("adapter", "model", "task"):
            if isinstance(entry, dict) and f"override /{group}" in entry:
                base[group] = entry[f"override /{group}"]
    base.update({key: data[key] for key in ("seed", "r") if key in data})
    return base


def _point_matches(record: RunRecord, experiment: str, point: dict[str, Any], seed: int,
                   base: dict[str, Any] | None = None) -> bool:
    if record.experiment != experiment or record.seed != seed:
        return False
    if base and any(key in base and getattr(record, key) != base[key] for key in ("model", "task")):
        return False  # e.g. the same experiment run on another model by an override
    if "adapter" in point and record.adapter != str(point["adapter"]):
        return False
    if "lr" in point and not math.isclose(record.lr, float(point["lr"]), rel_tol=1e-9):
        return False
    if "r" in point and record.adapter != "fft" and record.r != int(point["r"]):
        return False
    if "adapter.mora_type" in point:
        wanted = canonical_mora_type(point["adapter.mora_type"], record.r)
        if record.mora_type != wanted:
            return False
    return True


def missing_points(experiment: str, records: Sequence[RunRecord], seeds: Sequence[int] | None = None,
                   experiment_dir: Path = EXPERIMENT_DIR) -> list[dict[str, Any]]:
    """Grid points (with their seed) that have no completed record yet."""
    base, grid = load_sweep(experiment, experiment_dir)
    seeds = list(seeds) if seeds else [int(base.get("seed", 0))]
    missing = []
    for point in grid:
        for seed in seeds:
            if not any(_point_matches(rec, experiment, point, seed, base) for rec in records):
                missing.append({**point, "seed": seed})
    return missing


def best_settings(experiment: str, records: Sequence[RunRecord], experiment_dir: Path = EXPERIMENT_DIR
                  ) -> list[tuple[dict[str, Any], float, str]]:
    """For each method of the grid (the grid without lr): ``(overrides without lr, best lr, explanation)``, from the
    sweep seed's records. Methods with no phase-1 record are left out."""
    base, grid = load_sweep(experiment, experiment_dir)
    seed = int(base.get("seed", 0))
    methods: list[dict[str, Any]] = []
    for point in grid:
        method = {k: v for k, v in point.items() if k != "lr"}
        if method not in methods:
            methods.append(method)
    out = []
    for method in methods:
        by_lr: dict[float, list[RunRecord]] = {}
        for point in (p for p in grid if {k: v for k, v in p.items() if k != "lr"} == method):
            runs = [rec for rec in records if _point_matches(rec, experiment, point, seed, base)]
            if runs:
                by_lr[float(point.get("lr", runs[0].lr))] = runs
        if not by_lr:
            continue
        task = next(iter(by_lr.values()))[0].task
        metric = PRIMARY_METRIC.get(task, "char_acc")
        spec = metric_spec(metric)
        choice = choose_lr(by_lr, final_metric(metric), spec.higher_is_better)
        shown = ", ".join(f"{lr:g}: {'—' if stat is None else spec.format_number(stat.mean)}"
                          for lr, stat in choice.candidates)
        label = f"{experiment} {_overrides(method)}".strip()
        out.append((method, choice.lr, f"{label}: best lr {choice.lr:g} by mean {metric} on seed {seed} ({shown})"))
    return out


def _overrides(values: dict[str, Any]) -> str:
    return " ".join(f"{key}={value}" for key, value in values.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Plan the phases of a CPU reproduction sweep from its records.")
    parser.add_argument("command", choices=["missing", "best"])
    parser.add_argument("experiment", help="experiment name, e.g. cpu/uuid_lora")
    parser.add_argument("--results", default="results", help="results folder holding runs/ (default: results)")
    parser.add_argument("--where", action="append", default=[], metavar="KEY=VALUE",
                        help="only grid points with this value (e.g. --where r=8); repeatable")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds (missing: default the file's seed; "
                                                      "best: list only methods lacking one of these seeds)")
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    except ValueError:
        print(f"error: --seeds {args.seeds!r} is not a comma-separated list of integers", file=sys.stderr)
        return 2
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --where {item!r} is not KEY=VALUE", file=sys.stderr)
            return 2
        where[key] = _scalar(value)
    records = load_records(args.results, report=lambda message: None)
    try:
        if args.command == "missing":
            points = missing_points(args.experiment, records, seeds)
            print(len([p for p in points if all(p.get(k) == v for k, v in where.items())]))
            return 0
        base, _ = load_sweep(args.experiment)
        for method, lr, explanation in best_settings(args.experiment, records):
            if not all(method.get(k) == v for k, v in where.items()):
                continue
            print(explanation, file=sys.stderr)
            point = {**method, "lr": lr}
            pending = [s for s in (seeds or []) if not any(_point_matches(rec, args.experiment, point, s, base)
                                                           for rec in records)]
            if seeds is None:
                print(_overrides(point))
            elif pending:
                print(_overrides(point) + " seed=" + ",".join(str(s) for s in pending))
    except SweepFileError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

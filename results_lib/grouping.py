"""Grouping runs into settings, mean ± std over seeds, and choosing the grid point of a sweep.

A *setting* is (task, model, adapter, r, mora_type, grid point); its runs differ only in the seed. A *grid point* is
the lr plus the other values the paper searched for some methods (LoRA+'s λ, ReLoRA's merge interval: ``GRID_KEYS``).
A *method* is a setting without the grid point: when a method was run at several points, the tables and figures show
the point whose mean metric is best (ties broken by the lower mean final ``train_loss``, then the smaller point) and
say which point that was — as the paper reports the best point of its grids (Table 5).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple

from .naming import adapter_sort_key, format_lr, model_sort_key, mora_type_sort_key, r_sort_key
from .records import RunRecord

# Config keys searched besides the lr, with their short label (docs/PAPER.md "## Table 5 — fine-tuning
# hyper-parameters": LoRA+'s λ, ReLoRA's merge interval), and the adapters that use them (an experiment file that
# sets adapter.restart.* for its Re- variants leaves the key in the LoRA/MoRA runs' configs too, unused there).
GRID_KEYS = {"adapter.loraplus_lr_ratio": "λ", "adapter.restart.merge_every": "every"}
GRID_KEY_ADAPTERS = {"adapter.loraplus_lr_ratio": ("loraplus",), "adapter.restart.merge_every": ("relora", "remora")}


class GridPoint(NamedTuple):
    """The lr and the other searched values of a run, ordered by lr first."""

    lr: float
    extras: tuple[tuple[str, float], ...] = ()

    def label(self) -> str:
        """``"3e-4"``, or with other grid values ``"3e-4, λ=2"``."""
        return ", ".join([format_lr(self.lr)] + [f"{GRID_KEYS.get(k, k)}={v:g}" for k, v in self.extras])


def grid_point(record: RunRecord) -> GridPoint:
    extras = []
    for key in GRID_KEYS:
        if record.adapter not in GRID_KEY_ADAPTERS[key]:
            continue
        value = record.config_value(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            extras.append((key, float(value)))
    return GridPoint(record.lr, tuple(extras))


def format_point(point) -> str:
    """A grid point's label (a plain float is an lr)."""
    return point.label() if isinstance(point, GridPoint) else format_lr(point)


class MethodKey(NamedTuple):
    task: str
    model: str
    adapter: str
    r: int | None
    mora_type: str | None

    def sort_key(self) -> tuple:
        return (self.task, model_sort_key(self.model), adapter_sort_key(self.adapter), r_sort_key(self.r),
                mora_type_sort_key(self.mora_type))


def method_key(record: RunRecord) -> MethodKey:
    return MethodKey(record.task, record.model, record.adapter, record.r, record.mora_type)


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof = 1; 0.0 when n = 1) of one metric over ``n`` seeds."""

    mean: float
    std: float
    n: int


def aggregate(values: Iterable[float | None]) -> Stat | None:
    """Stat of the non-None values, or None when there are none."""
    present = [float(v) for v in values if v is not None]
    if not present:
        return None
    std = statistics.stdev(present) if len(present) > 1 else 0.0
    return Stat(statistics.fmean(present), std, len(present))


def latest_per_seed(records: Iterable[RunRecord]) -> list[RunRecord]:
    """One run per (setting, seed): a setting re-run with the same seed keeps its most recent record
    (by ``created``, then path), so a repeated run is not counted as an extra seed."""
    best: dict[tuple, RunRecord] = {}
    for record in records:
        key = (method_key(record), grid_point(record), record.seed)
        current = best.get(key)
        if current is None or (record.created, record.path) > (current.created, current.path):
            best[key] = record
    return sorted(best.values(), key=lambda rec: rec.path)


def group_methods(records: Iterable[RunRecord]) -> dict[MethodKey, dict[GridPoint, list[RunRecord]]]:
    """``{method: {grid point: [runs of that setting, one per seed, sorted by seed]}}`` in display order."""
    groups: dict[MethodKey, dict[GridPoint, list[RunRecord]]] = {}
    for record in latest_per_seed(records):
        groups.setdefault(method_key(record), {}).setdefault(grid_point(record), []).append(record)
    ordered = {}
    for key in sorted(groups, key=MethodKey.sort_key):
        ordered[key] = {lr: sorted(runs, key=lambda rec: rec.seed) for lr, runs in sorted(groups[key].items())}
    return ordered


@dataclass(frozen=True)
class LrChoice:
    """The chosen lr of one method and every candidate lr with the Stat it was ranked by (None when no run has the
    metric); ``seeds`` = the seeds the ranking used (those every lr has), None when it used all runs.

    Selection and reporting use different seeds: when several lrs were compared, the seeds they all share are the
    *selection* seeds, and the tables report the chosen lr over its other seeds (:meth:`reported`), so the seed that
    picked the lr is not part of the reported mean."""

    lr: float
    candidates: tuple[tuple[float, Stat | None], ...]
    seeds: tuple[int, ...] | None = None
    selection_seeds: tuple[int, ...] = ()

    @property
    def swept(self) -> bool:
        return len(self.candidates) > 1

    def reported(self, runs_by_lr: dict) -> list[RunRecord]:
        """The chosen lr's runs on the seeds that did not select it; all its runs when no lr was selected (one lr)
        or when only the selection seeds have run (:meth:`reports_selection_seed` then says so)."""
        runs = runs_by_lr[self.lr]
        held_out = [run for run in runs if run.seed not in self.selection_seeds]
        return held_out or list(runs)

    def reports_selection_seed(self, runs_by_lr: dict) -> bool:
        """True when the reported runs include a seed that selected the lr (no reporting seed has run yet)."""
        return self.swept and any(run.seed in self.selection_seeds for run in self.reported(runs_by_lr))

    def reporting_seeds(self, runs_by_lr: dict) -> tuple[int, ...]:
        return tuple(sorted({run.seed for run in self.reported(runs_by_lr)}))


def choose_lr(runs_by_lr: dict[float, list[RunRecord]], value: Callable[[RunRecord], float | None],
              higher_is_better: bool) -> LrChoice:
    """The lr whose runs have the best mean ``value`` (ties: lower mean final train_loss, then smaller lr).

    When several lrs were run, they are compared on the seeds they all have (a sweep's seed), so the extra seeds
    run later at the chosen lr cannot move the choice; with no common seed, on all runs. An lr none of whose runs
    has a value ranks last; when no lr has one the smallest lr is returned.
    """
    def loss_mean(runs: list[RunRecord]) -> float:
        stat = aggregate(run.final.get("train_loss") for run in runs)
        return stat.mean if stat is not None else float("inf")

    seeds: tuple[int, ...] | None = None
    selection: tuple[int, ...] = ()
    if len(runs_by_lr) > 1:
        common = set.intersection(*({run.seed for run in runs} for runs in runs_by_lr.values()))
        selection = tuple(sorted(common))
        if common and any({run.seed for run in runs} != common for runs in runs_by_lr.values()):
            seeds = selection
    candidates = []
    ranking = []
    for lr, all_runs in sorted(runs_by_lr.items()):
        runs = all_runs if seeds is None else [run for run in all_runs if run.seed in seeds]
        stat = aggregate(value(run) for run in runs)
        candidates.append((lr, stat))
        if stat is None:
            primary = float("inf")
        else:
            primary = -stat.mean if higher_is_better else stat.mean
        ranking.append(((stat is None, primary, loss_mean(runs), lr), lr))
    best = min(ranking)[1]
    return LrChoice(best, tuple(candidates), seeds, selection)


def final_metric(metric: str) -> Callable[[RunRecord], float | None]:
    """A value function: the run's final ``metric`` (None when absent)."""
    return lambda run: run.final.get(metric)


def metric_at_step(metric: str, step: int) -> Callable[[RunRecord], float | None]:
    """A value function: ``metric`` logged at exactly ``step`` (the final value counts when the run ended there)."""
    def value(run: RunRecord) -> float | None:
        logged = run.value_at(metric, step)
        if logged is None and run.history and int(run.history[-1]["step"]) == step:
            return run.final.get(metric)
        return logged
    return value

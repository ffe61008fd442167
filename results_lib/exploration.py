"""The notebook's exploratory view: each setting's final score against its trainable parameters.

One point per method (adapter, r, MoRA type) at its chosen lr, the mean over the seeds that did not select the lr
(``LrChoice.reported``). Every point has its own legend entry (method, rank and MoRA type), the colour of its method
at its rank and a marker per MoRA type, so the seven MoRA types at one rank are seven labelled points. The x axis is
logarithmic only when the parameter counts span at least ``LOG_AXIS_MIN_RATIO`` (max / min); a narrow range (the
pretraining methods differ by a fraction of a percent) gets a linear axis.
"""
from __future__ import annotations

from typing import Sequence

from matplotlib.figure import Figure

from .figure_style import method_color
from .figures import new_figure
from .grouping import aggregate, choose_lr, final_metric, group_methods
from .metrics import metric_spec
from .naming import MORA_ADAPTERS, MORA_TYPE_ORDER, method_label, model_name, model_sort_key
from .records import RunRecord

SCORES = {"uuid": "char_acc", "pretrain": "val_ppl"}
LOG_AXIS_MIN_RATIO = 10.0
TYPE_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "h")


def exploration_points(records: Sequence[RunRecord]) -> list[dict]:
    """``[{"task", "model", "adapter", "r", "mora_type", "label", "trainable", <metric>, "n"}, ...]``: one row per
    method with a score and a trainable-parameter count."""
    points = []
    for key, by_lr in group_methods(records).items():
        metric = SCORES.get(key.task)
        if metric is None:
            continue
        choice = choose_lr(by_lr, final_metric(metric), metric_spec(metric).higher_is_better)
        chosen = choice.reported(by_lr)  # the seeds that did not select the lr
        stat = aggregate(run.final.get(metric) for run in chosen)
        trainable = next((run.trainable_params for run in chosen if run.trainable_params), None)
        if stat is not None and trainable:
            points.append({"task": key.task, "model": key.model, "adapter": key.adapter, "r": key.r,
                           "mora_type": key.mora_type,
                           "label": method_label(key.adapter, key.r, key.mora_type, key.adapter in MORA_ADAPTERS),
                           "trainable": trainable, metric: stat.mean, "n": stat.n})
    return points


def use_log_axis(values: Sequence[float]) -> bool:
    """True when the positive ``values`` span a ratio max / min of at least ``LOG_AXIS_MIN_RATIO``."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) / min(positive) >= LOG_AXIS_MIN_RATIO


def _marker(mora_type: str | None) -> str:
    if mora_type is None:
        return TYPE_MARKERS[0]
    order = MORA_TYPE_ORDER + [mora_type]
    return TYPE_MARKERS[order.index(mora_type) % len(TYPE_MARKERS)]


def exploration_figures(points: Sequence[dict]) -> list[tuple[tuple[str, str], Figure]]:
    """``[((task, model), Figure), ...]``: the score of each method against its trainable parameters."""
    out = []
    settings = sorted({(p["task"], p["model"]) for p in points}, key=lambda s: (s[0], model_sort_key(s[1])))
    for task, model in settings:
        metric = SCORES[task]
        spec = metric_spec(metric)
        scale = 100.0 if spec.percent else 1.0
        rows = [p for p in points if (p["task"], p["model"]) == (task, model)]
        fig = new_figure(8.4, 4.4)
        ax = fig.add_subplot()
        for row in rows:
            ax.scatter([row["trainable"]], [row[metric] * scale], s=40, color=method_color(row["adapter"], row["r"]),
                       marker=_marker(row["mora_type"]), edgecolors="black", linewidths=0.4,
                       label=f"{row['label']} (n={row['n']})")
        log = use_log_axis([row["trainable"] for row in rows])
        if log:
            ax.set_xscale("log")
        else:
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)
        ax.set_xlabel("trainable parameters" + (" (log scale)" if log else ""))
        ax.set_ylabel(spec.label)
        ax.set_title(f"{task}, model {model_name(model)}: final score against trainable parameters\n"
                     "each method at its chosen lr, mean over its reporting seeds", fontsize=10)
        fig.legend(fontsize=7, loc="outside right upper", ncols=1 if len(rows) <= 14 else 2)
        out.append(((task, model), fig))
    return out

"""Builders of the paper's figures from result records, written reproducibly (matplotlib Agg, no timestamps).

Each builder returns ``[(file stem, Figure), ...]``, one figure per file; :func:`save_figure` writes PNG and PDF
with the version/date metadata removed, so rebuilding from the same records gives byte-identical files.
"""
from __future__ import annotations

import io
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .grouping import MethodKey, choose_lr, final_metric, format_point, group_methods  # noqa: E402
from .metrics import metric_spec  # noqa: E402
from .naming import MORA_ADAPTERS, MORA_TYPE_ORDER, adapter_name, method_label, model_name, \
    model_sort_key, mora_type_name  # noqa: E402
from .output import write_bytes_atomic  # noqa: E402
from .records import RunRecord  # noqa: E402
from .tables import PRETRAIN_TASK, UUID_TASK, is_paper_default_type  # noqa: E402

ADAPTER_COLORS = {"fft": "black", "lora": "tab:blue", "dora": "tab:orange", "hira": "tab:green", "miss": "tab:purple",
                  "mora": "tab:red", "relora": "tab:cyan", "remora": "tab:brown", "loraplus": "tab:olive",
                  "asylora": "tab:pink"}
LINESTYLES = ["-", "--", ":", "-."]
PRIMARY_METRIC = {UUID_TASK: "char_acc", PRETRAIN_TASK: "val_ppl"}
RC = {"svg.hashsalt": "mora-results", "font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
      "figure.dpi": 100, "savefig.dpi": 150, "pdf.fonttype": 42, "path.simplify": False}
PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}


def _color(adapter: str) -> str:
    return ADAPTER_COLORS.get(adapter, "tab:gray")


def _best_runs(by_lr: dict[float, list[RunRecord]], task: str) -> tuple[float, list[RunRecord]]:
    """The runs at the lr the tables show (best mean primary metric of the task; smallest lr when none)."""
    metric = PRIMARY_METRIC.get(task)
    if metric is None:
        lr = min(by_lr)
        return lr, by_lr[lr]
    choice = choose_lr(by_lr, final_metric(metric), metric_spec(metric).higher_is_better)
    return choice.lr, choice.reported(by_lr)


def mean_curve(runs: Sequence[RunRecord], metric: str) -> tuple[list[int], list[float], list[float], int]:
    """Steps, mean and sample std over runs of ``metric`` at each logged step (std 0 where one run logged it), and the
    number of runs with at least one point."""
    per_step: dict[int, list[float]] = defaultdict(list)
    n = 0
    for run in runs:
        curve = run.curve(metric)
        n += bool(curve)
        for step, value in curve:
            per_step[step].append(value)
    steps = sorted(per_step)
    means = [statistics.fmean(per_step[s]) for s in steps]
    stds = [statistics.stdev(per_step[s]) if len(per_step[s]) > 1 else 0.0 for s in steps]
    return steps, means, stds, n


def new_figure(width: float = 6.4, height: float = 4.2) -> Figure:
    with plt.rc_context(RC):
        return Figure(figsize=(width, height), layout="constrained")


def _style_by_r(keys: Sequence[MethodKey]) -> dict:
    ranks = sorted({k.r for k in keys if k.r is not None})
    return {r: LINESTYLES[i % len(LINESTYLES)] for i, r in enumerate(ranks)}


def _plot_method_curves(ax, groups: dict[MethodKey, dict[float, list[RunRecord]]], metric: str, task: str,
                        scale: float = 1.0) -> bool:
    styles = _style_by_r(list(groups))
    plotted = False
    for key, by_lr in groups.items():
        lr, runs = _best_runs(by_lr, task)
        steps, means, stds, n = mean_curve(runs, metric)
        if not steps:
            continue
        label = method_label(key.adapter, key.r, key.mora_type, key.adapter in MORA_ADAPTERS)
        label += f", lr {format_point(lr)}, n={n}"
        mean = [m * scale for m in means]
        ax.plot(steps, mean, color=_color(key.adapter), linestyle=styles.get(key.r, "-"), linewidth=1.6,
                label=label)
        if n > 1:
            ax.fill_between(steps, [m - s * scale for m, s in zip(mean, stds)],
                            [m + s * scale for m, s in zip(mean, stds)], color=_color(key.adapter), alpha=0.15,
                            linewidth=0)
        plotted = True
    return plotted


def uuid_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """UUID memorization: greedy character accuracy and training loss against steps, per model."""
    runs = [rec for rec in records if rec.task == UUID_TASK and is_paper_default_type(rec)]
    out = []
    for model in sorted({rec.model for rec in runs}, key=model_sort_key):
        groups = group_methods(rec for rec in runs if rec.model == model)
        for metric, ylabel, scale in (("char_acc", "greedy character accuracy (%)", 100.0),
                                      ("train_loss", "training loss (cross-entropy, nats/token)", 1.0)):
            fig = new_figure()
            ax = fig.add_subplot()
            if not _plot_method_curves(ax, groups, metric, UUID_TASK, scale):
                continue
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(ylabel)
            what = "character accuracy" if metric == "char_acc" else "training loss"
            ax.set_title(f"UUID memorization: {what}\nmodel {model_name(model)}; mean ± std over seeds",
                         fontsize=10)
            if metric == "char_acc":
                ax.set_ylim(0, 100)
            ax.legend(fontsize=8, loc="best")
            out.append((f"uuid_{metric}__{model}", fig))
    return out


def merge_every(run: RunRecord) -> int | None:
    """The restart interval of a ReLoRA/ReMoRA run from its config (``adapter.restart.merge_every``)."""
    for dotted in ("adapter.restart.merge_every", "adapter.merge_every"):
        value = run.config_value(dotted)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def pretrain_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """Pretraining loss curves per model; merges of ReLoRA/ReMoRA as vertical lines at multiples of merge_every."""
    runs = [rec for rec in records if rec.task == PRETRAIN_TASK]
    out = []
    for model in sorted({rec.model for rec in runs}, key=model_sort_key):
        groups = group_methods(rec for rec in runs if rec.model == model)
        metric = "train_loss" if any(r.curve("train_loss") for r in runs if r.model == model) else "val_loss"
        fig = new_figure()
        ax = fig.add_subplot()
        if not _plot_method_curves(ax, groups, metric, PRETRAIN_TASK):
            continue
        last_step = max(step for rec in runs if rec.model == model for step, _ in rec.curve(metric))
        marked = set()
        for key, by_lr in groups.items():
            _, chosen = _best_runs(by_lr, PRETRAIN_TASK)
            every = next((merge_every(run) for run in chosen if merge_every(run)), None)
            if every is None or (key.adapter, every) in marked:
                continue
            marked.add((key.adapter, every))
            for i, step in enumerate(range(every, last_step, every)):
                ax.axvline(step, color=_color(key.adapter), linestyle=":", linewidth=1.0, alpha=0.7,
                           label=f"{adapter_name(key.adapter)} merge (every {every} steps)" if i == 0 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(("training" if metric == "train_loss" else "validation") + " loss (cross-entropy, nats/token)")
        ax.set_title(f"Pretraining from scratch\nmodel {model_name(model)}; mean ± std over seeds", fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        out.append((f"pretrain_loss__{model}", fig))
    return out


def _first_integer(path: str) -> int | None:
    return next((int(part) for part in path.split(".") if part.isdigit()), None)


def analysis_layers(run: RunRecord) -> tuple[float | None, list[dict]]:
    """``(threshold, [{"name", "module", "layer_index", "count"}, ...])`` from a record's ``analysis``.

    Two layouts are read: moRA.analysis's ``{"delta_w_singular_values": {"threshold": 0.1, "sv_above_threshold":
    {"model.layers.0.self_attn.q_proj": 12, ...}, ...}}`` (module = last path component, layer index = first integer
    component) and the flat ``{"sv_threshold": 0.1, "layers": [{"name", "module", "layer_index", "count",
    "shape"}]}``. Entries without a module or layer index are left out."""
    analysis = run.analysis or {}
    nested = analysis.get("delta_w_singular_values")
    if isinstance(nested, dict) and isinstance(nested.get("sv_above_threshold"), dict):
        threshold = nested.get("threshold")
        layers = [{"name": name, "module": name.rsplit(".", 1)[-1], "layer_index": _first_integer(name),
                   "count": count} for name, count in sorted(nested["sv_above_threshold"].items())]
    elif isinstance(analysis.get("layers"), list):
        threshold = analysis.get("sv_threshold")
        layers = [layer for layer in analysis["layers"] if isinstance(layer, dict)]
    else:
        return None, []
    usable = [layer for layer in layers if isinstance(layer.get("layer_index"), int)
              and isinstance(layer.get("count"), (int, float)) and not isinstance(layer.get("count"), bool)
              and isinstance(layer.get("module"), str)]
    return (float(threshold) if isinstance(threshold, (int, float)) else None), usable


def _analysis_layers(run: RunRecord) -> list[dict]:
    return analysis_layers(run)[1]


def singular_value_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """Number of singular values of ΔW above the threshold per layer: one panel per module type, one line per
    method (mean over seeds). Reads ``record["analysis"]`` through :func:`analysis_layers`."""
    runs = [rec for rec in records if _analysis_layers(rec)]
    out = []
    for task, model in sorted({(rec.task, rec.model) for rec in runs}, key=lambda s: (s[0], model_sort_key(s[1]))):
        groups = group_methods(rec for rec in runs if (rec.task, rec.model) == (task, model))
        per_method: dict[MethodKey, dict[str, dict[int, list[float]]]] = {}
        thresholds = set()
        for key, by_lr in groups.items():
            _, chosen = _best_runs(by_lr, task)
            table: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
            for run in chosen:
                threshold, layers = analysis_layers(run)
                if threshold is not None:
                    thresholds.add(threshold)
                for layer in layers:
                    table[layer["module"]][layer["layer_index"]].append(float(layer["count"]))
            per_method[key] = table
        modules = sorted({m for table in per_method.values() for m in table}, key=_module_order)
        cols = min(4, len(modules))
        rows = -(-len(modules) // cols)
        fig = new_figure(3.2 * cols, 2.6 * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
        styles = _style_by_r(list(per_method))
        for index, module in enumerate(modules):
            ax = axes[index // cols][index % cols]
            for key, table in per_method.items():
                if module not in table:
                    continue
                layers = sorted(table[module])
                counts = [statistics.fmean(table[module][i]) for i in layers]
                ax.plot(layers, counts, marker="o", markersize=3, color=_color(key.adapter),
                        linestyle=styles.get(key.r, "-"),
                        label=method_label(key.adapter, key.r, key.mora_type, key.adapter in MORA_ADAPTERS))
            ax.set_title(module, fontsize=9)
            ax.set_xlabel("layer index")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            if index % cols == 0:
                ax.set_ylabel("singular values > threshold")
        for index in range(len(modules), rows * cols):
            axes[index // cols][index % cols].set_visible(False)
        threshold = ", ".join(f"{t:g}" for t in sorted(thresholds)) or "the threshold"
        fig.suptitle(f"Number of singular values of ΔW above {threshold}, per layer\n"
                     f"task {task}, model {model_name(model)}; mean over seeds", fontsize=10)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize=8)
        out.append((f"singular_values__{task}_{model}", fig))
    return out


def _module_order(module: str) -> tuple[int, str]:
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return (order.index(module), "") if module in order else (len(order), module)


def ablation_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """Bar chart of the compression/decompression ablation per (task, model, r) with runs of ≥ 2 MoRA types:
    mean of the task's primary metric with ± std error bars; types not run are labelled "not run"."""
    runs = [rec for rec in records if rec.adapter == "mora" and rec.mora_type is not None]
    out = []
    settings = sorted({(rec.task, rec.model, rec.r) for rec in runs},
                      key=lambda s: (s[0], model_sort_key(s[1]), -1 if s[2] is None else s[2]))
    for task, model, r in settings:
        groups = group_methods(rec for rec in runs if (rec.task, rec.model, rec.r) == (task, model, r))
        by_type = {key.mora_type: by_lr for key, by_lr in groups.items()}
        if len(by_type) < 2:
            continue
        metric = PRIMARY_METRIC.get(task) or sorted({m for rs in runs for m in rs.final})[0]
        spec = metric_spec(metric)
        scale = 100.0 if spec.percent else 1.0
        types = MORA_TYPE_ORDER + sorted(set(by_type) - set(MORA_TYPE_ORDER))
        fig = new_figure(7.0, 4.2)
        ax = fig.add_subplot()
        for x, mora_type in enumerate(types):
            if mora_type not in by_type:
                ax.text(x, 0, "not run", rotation=90, ha="center", va="bottom", fontsize=8, color="gray")
                continue
            lr, chosen = _best_runs(by_type[mora_type], task)
            values = [run.final[metric] * scale for run in chosen if metric in run.final]
            if not values:
                continue
            mean = statistics.fmean(values)
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            ax.bar(x, mean, yerr=std if len(values) > 1 else None, capsize=4, color="tab:red", alpha=0.8)
            ax.annotate(f"n={len(values)}\nlr {format_point(lr)}", (x, mean + std), textcoords="offset points",
                        xytext=(0, 4), ha="center", fontsize=7)
        ax.set_xticks(range(len(types)), [mora_type_name(t) for t in types], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("compression / decompression type")
        ax.set_ylabel(("final " if task == UUID_TASK else "") + spec.label)
        ax.grid(False, axis="x")
        ax.set_title(f"MoRA compression/decompression ablation\ntask {task}, model {model_name(model)}, r = {r}; "
                     "mean ± std over seeds", fontsize=10)
        ax.margins(y=0.15)
        out.append((f"ablation__{task}_{model}_r{r}", fig))
    return out


FIGURE_BUILDERS = (uuid_figures, pretrain_figures, singular_value_figures, ablation_figures)
FIGURE_PATTERNS = ("uuid_*.png", "uuid_*.pdf", "pretrain_loss__*.png", "pretrain_loss__*.pdf",
                   "singular_values__*.png", "singular_values__*.pdf", "ablation__*.png", "ablation__*.pdf",
                   "paper_fig*.png", "paper_fig*.pdf", "SOURCES.md")


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure encoded as ``fmt`` ("png" or "pdf") without creation date or software version."""
    buffer = io.BytesIO()
    metadata = PNG_METADATA if fmt == "png" else PDF_METADATA
    with plt.rc_context(RC):
        fig.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def save_figure(fig: Figure, directory: Path | str, stem: str, formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write ``<directory>/<stem>.<fmt>`` for each format atomically; returns the paths."""
    paths = []
    for fmt in formats:
        path = Path(directory) / f"{stem}.{fmt}"
        write_bytes_atomic(path, figure_bytes(fig, fmt))
        paths.append(path)
    return paths


def build_all_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """Every figure the records allow, in a fixed order: the paper's (paper_figures.py), then the per-layer views."""
    from .paper_figures import PAPER_FIGURE_BUILDERS

    with plt.rc_context(RC):
        return [item for builder in (*PAPER_FIGURE_BUILDERS, *FIGURE_BUILDERS) for item in builder(records)]

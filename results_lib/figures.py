"""Builders of the paper's figures from result records, written reproducibly (matplotlib Agg, no timestamps).

Each builder returns ``[(file stem, Figure), ...]``, one figure per file; :func:`save_figure` writes PNG and PDF
with the version/date metadata removed, so rebuilding from the same records gives byte-identical files.
"""
from __future__ import annotations

import io
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .figure_style import BAND_GID, SEED_POINTS_MAX_N, band_bounds, clip_band, draw_chance_line, \
    draw_seed_points, fitted_limits, method_color, method_linestyle  # noqa: E402
from .grouping import MethodKey, choose_lr, final_metric, format_point, group_methods  # noqa: E402
from .metrics import metric_spec  # noqa: E402
from .naming import MORA_ADAPTERS, MORA_TYPE_ORDER, adapter_name, method_label, model_name, \
    model_sort_key, mora_type_name  # noqa: E402
from .output import write_bytes_atomic  # noqa: E402
from .records import RunRecord  # noqa: E402
from .sv_records import analysis_layers, layer_ceiling  # noqa: E402,F401  (analysis_layers: also imported from here)
from .tables import PRETRAIN_TASK, UUID_TASK, is_paper_default_type  # noqa: E402

CEILING_LABEL = "ceiling min(d, k)"
PRIMARY_METRIC = {UUID_TASK: "char_acc", PRETRAIN_TASK: "val_ppl"}
RC = {"svg.hashsalt": "mora-results", "font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
      "figure.dpi": 100, "savefig.dpi": 150, "pdf.fonttype": 42, "path.simplify": False}
PNG_METADATA = {"Software": None}
PDF_METADATA = {"Creator": None, "Producer": None, "CreationDate": None}
ZOOM_FROM = 1 / 3  # the pretraining figure's second panel: the last two thirds of training


def _color(adapter: str, r: int | None = None) -> str:
    return method_color(adapter, r)


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


@dataclass
class Curve:
    """One method's plotted curve: steps, mean and clipped band edges (× scale), each seed's last point."""

    key: MethodKey
    steps: list[int]
    means: list[float]
    lower: list[float]
    upper: list[float]
    seed_points: list[tuple[int, float]]

    def values_from(self, start: float) -> list[float]:
        """Every plotted value (means, band edges, seed points) at steps ≥ ``start``."""
        inside = [i for i, step in enumerate(self.steps) if step >= start]
        return ([self.means[i] for i in inside] + [self.lower[i] for i in inside] + [self.upper[i] for i in inside]
                + [v for step, v in self.seed_points if step >= start])


def _method_curves(groups: dict[MethodKey, dict[float, list[RunRecord]]], metric: str, task: str,
                   scale: float = 1.0) -> list[tuple[Curve, str]]:
    """Each method's curve at its reported lr, with its legend label."""
    bounds = band_bounds(metric, scale)
    curves = []
    for key, by_lr in groups.items():
        lr, runs = _best_runs(by_lr, task)
        steps, means, stds, n = mean_curve(runs, metric)
        if not steps:
            continue
        label = method_label(key.adapter, key.r, key.mora_type, key.adapter in MORA_ADAPTERS)
        label += f", lr {format_point(lr)}, n={n}"
        mean = [m * scale for m in means]
        lower, upper = clip_band(mean, [s * scale for s in stds], bounds) if n > 1 else (mean, mean)
        seeds = [(run.curve(metric)[-1][0], run.curve(metric)[-1][1] * scale) for run in runs if run.curve(metric)]
        curves.append((Curve(key, steps, mean, lower, upper, seeds if n <= SEED_POINTS_MAX_N else []), label))
    return curves


def _draw_curves(ax, curves: list[tuple[Curve, str]], legend: bool = True) -> None:
    for curve, label in curves:
        color = _color(curve.key.adapter, curve.key.r)
        ax.plot(curve.steps, curve.means, color=color, linestyle=method_linestyle(curve.key.r), linewidth=1.6,
                label=label if legend else "_" + label)
        if curve.lower != curve.means or curve.upper != curve.means:
            ax.fill_between(curve.steps, curve.lower, curve.upper, color=color, alpha=0.15, linewidth=0,
                            gid=BAND_GID)
        draw_seed_points(ax, [x for x, _ in curve.seed_points], [y for _, y in curve.seed_points], color)


def _plot_method_curves(ax, groups: dict[MethodKey, dict[float, list[RunRecord]]], metric: str, task: str,
                        scale: float = 1.0) -> list[Curve]:
    """Mean curve, mean ± std band (n > 1, clipped to the metric's range) and, for n ≤ 3, each seed's final value
    of every method at its reported lr; returns the curves drawn (empty: nothing to draw)."""
    curves = _method_curves(groups, metric, task, scale)
    _draw_curves(ax, curves)
    return [curve for curve, _ in curves]


def uuid_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """UUID memorization: greedy character accuracy (with the chance level) and training loss against steps, per
    model."""
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
            ax.set_title(f"UUID memorization: {what}\nmodel {model_name(model)}; mean ± std over seeds"
                         f" (dots: each seed's last value where n ≤ {SEED_POINTS_MAX_N})", fontsize=10)
            if metric == "char_acc":
                draw_chance_line(ax, scale)
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


def _merge_lines(groups: dict[MethodKey, dict[float, list[RunRecord]]], last_step: int) -> list[tuple[str, int]]:
    """``[(adapter, merge_every), ...]`` of the restart methods, one per (adapter, interval)."""
    marked: list[tuple[str, int]] = []
    for key, by_lr in groups.items():
        _, chosen = _best_runs(by_lr, PRETRAIN_TASK)
        every = next((merge_every(run) for run in chosen if merge_every(run)), None)
        if every is not None and every < last_step and (key.adapter, every) not in marked:
            marked.append((key.adapter, every))
    return marked


def _draw_merges(ax, merges: list[tuple[str, int]], last_step: int, legend: bool) -> None:
    for adapter, every in merges:
        for i, step in enumerate(range(every, last_step, every)):
            ax.axvline(step, color=_color(adapter), linestyle=":", linewidth=1.0, alpha=0.7,
                       label=f"{adapter_name(adapter)} merge (every {every} steps)" if i == 0 and legend else None)


def by_experiment(runs: Sequence[RunRecord]) -> list[tuple[str, list[RunRecord]]]:
    """Pretraining runs split by experiment file (each a length and shape; never one curve): ``[(stem suffix, runs)]``
    with suffix ``""`` when there is one experiment, else ``"__<experiment with / as _>"``."""
    experiments = sorted({rec.experiment or "" for rec in runs})
    if len(experiments) <= 1:
        return [("", list(runs))]
    return [(f"__{exp.replace('/', '_') or 'none'}", [rec for rec in runs if (rec.experiment or "") == exp])
            for exp in experiments]


def longest_experiment(runs: Sequence[RunRecord]) -> list[RunRecord]:
    """The runs of the pretraining experiment that trained longest (``trainer.max_steps``; ties: the name): the
    paper's Figures 4 and 5 show one setting."""
    if not runs:
        return []

    def steps(rec: RunRecord) -> int:
        value = rec.config_value("trainer.max_steps")
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    best = max({rec.experiment or "" for rec in runs},
               key=lambda exp: (max(steps(rec) for rec in runs if (rec.experiment or "") == exp), exp))
    return [rec for rec in runs if (rec.experiment or "") == best]


def pretrain_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """One figure per (model, experiment): see :func:`_pretrain_figure`."""
    runs = [rec for rec in records if rec.task == PRETRAIN_TASK]
    out = []
    for model in sorted({rec.model for rec in runs}, key=model_sort_key):
        for suffix, part in by_experiment([rec for rec in runs if rec.model == model]):
            out += [(stem + suffix, fig) for stem, fig in _pretrain_figure(part)]
    return out


def _pretrain_figure(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """Pretraining loss curves per model, over the whole run and zoomed on its last two thirds (y fitted to the data
    there); merges of ReLoRA/ReMoRA as vertical lines at multiples of merge_every."""
    runs = [rec for rec in records if rec.task == PRETRAIN_TASK]
    out = []
    for model in sorted({rec.model for rec in runs}, key=model_sort_key):
        groups = group_methods(rec for rec in runs if rec.model == model)
        metric = "train_loss" if any(r.curve("train_loss") for r in runs if r.model == model) else "val_loss"
        curves = _method_curves(groups, metric, PRETRAIN_TASK)
        if not curves:
            continue
        last_step = max(step for rec in runs if rec.model == model for step, _ in rec.curve(metric))
        merges = _merge_lines(groups, last_step)
        fig = new_figure(11.0, 4.4)
        full, zoom = fig.subplots(1, 2)
        start = last_step * ZOOM_FROM
        for ax, legend in ((full, True), (zoom, False)):
            _draw_curves(ax, curves, legend)
            _draw_merges(ax, merges, last_step, legend)
            ax.set_xlabel("optimizer step")
        full.set_ylabel(("training" if metric == "train_loss" else "validation") + " loss (cross-entropy, nats/token)")
        full.set_title("whole run", fontsize=9)
        zoom.set_xlim(start, last_step)
        limits = fitted_limits([v for curve, _ in curves for v in curve.values_from(start)])
        if limits:
            zoom.set_ylim(*limits)
        zoom.set_title(f"zoom: steps {start:.0f} to {last_step} (last two thirds), y fitted to the data there",
                       fontsize=9)
        experiments = ", ".join(sorted({rec.experiment or "?" for rec in runs if rec.model == model}))
        fig.suptitle(f"Pretraining from scratch, model {model_name(model)} ({experiments}); mean ± std over seeds"
                     f" (dots: each seed's last value where n ≤ {SEED_POINTS_MAX_N})", fontsize=10)
        full.legend(fontsize=8, loc="upper right")
        out.append((f"pretrain_loss__{model}", fig))
    return out


def _analysis_layers(run: RunRecord) -> list[dict]:
    return analysis_layers(run)[1]


def _sv_tables(groups: dict, task: str) -> tuple[dict, dict, set[float]]:
    """``{method: {module: {layer: [count of each seed]}}}``, ``{module: {layer: {ceilings}}}`` and the thresholds."""
    per_method: dict[MethodKey, dict[str, dict[int, list[float]]]] = {}
    ceilings: dict[str, dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    thresholds: set[float] = set()
    for key, by_lr in groups.items():
        _, chosen = _best_runs(by_lr, task)
        table: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
        for run in chosen:
            threshold, layers = analysis_layers(run)
            if threshold is not None:
                thresholds.add(threshold)
            for layer in layers:
                table[layer["module"]][layer["layer_index"]].append(float(layer["count"]))
                ceiling = layer_ceiling(run, layer)
                if ceiling is not None:
                    ceilings[layer["module"]][layer["layer_index"]].add(ceiling)
        per_method[key] = table
    return per_method, ceilings, thresholds


def _draw_sv_panel(ax, module: str, per_method: dict, ceilings: dict) -> None:
    for key, table in per_method.items():
        if module not in table:
            continue
        color = _color(key.adapter, key.r)
        layers = sorted(table[module])
        counts = [statistics.fmean(table[module][i]) for i in layers]
        ax.plot(layers, counts, marker="o", markersize=3, color=color, linestyle=method_linestyle(key.r),
                label=method_label(key.adapter, key.r, key.mora_type, key.adapter in MORA_ADAPTERS))
        spread = [(i, statistics.fmean(table[module][i]), statistics.stdev(table[module][i])) for i in layers
                  if len(table[module][i]) > 1]
        if spread:
            ax.vlines([i for i, _, _ in spread], [m - s for _, m, s in spread], [m + s for _, m, s in spread],
                      color=color, linewidth=1.2, gid=BAND_GID)
        if max(len(table[module][i]) for i in layers) <= SEED_POINTS_MAX_N:
            points = [(i, v) for i in layers for v in table[module][i]]
            draw_seed_points(ax, [i for i, _ in points], [v for _, v in points], color)
    tops = sorted((i, c) for i, values in ceilings.get(module, {}).items() for c in values)
    if tops:
        ax.plot([i for i, _ in tops], [c for _, c in tops], linestyle="none", marker="_", markersize=14,
                markeredgewidth=1.5, color="black", label=CEILING_LABEL)


def singular_value_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """Number of singular values of ΔW above the threshold per layer: one panel per module type, one line per
    method (mean over seeds) with ± std bars, each seed's count where n ≤ 3, and each layer's ceiling min(d, k).
    Reads ``record["analysis"]`` through :func:`analysis_layers`."""
    runs = [rec for rec in records if _analysis_layers(rec)]
    out = []
    for task, model in sorted({(rec.task, rec.model) for rec in runs}, key=lambda s: (s[0], model_sort_key(s[1]))):
        for suffix, part in by_experiment([rec for rec in runs if (rec.task, rec.model) == (task, model)]):
            out += [(stem + suffix, fig) for stem, fig in _singular_value_figure(part, task, model)]
    return out


def _singular_value_figure(runs: Sequence[RunRecord], task: str, model: str) -> list[tuple[str, Figure]]:
    out = []
    if runs:
        groups = group_methods(runs)
        per_method, ceilings, thresholds = _sv_tables(groups, task)
        modules = sorted({m for table in per_method.values() for m in table}, key=_module_order)
        cols = min(4, len(modules))
        rows = -(-len(modules) // cols)
        fig = new_figure(3.2 * cols, 2.6 * rows + 0.8)
        axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
        for index, module in enumerate(modules):
            ax = axes[index // cols][index % cols]
            _draw_sv_panel(ax, module, per_method, ceilings)
            ax.set_title(module, fontsize=9)
            ax.set_xlabel("layer index")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(bottom=0)
            if index % cols == 0:
                ax.set_ylabel("singular values > threshold")
        for index in range(len(modules), rows * cols):
            axes[index // cols][index % cols].set_visible(False)
        threshold = ", ".join(f"{t:g}" for t in sorted(thresholds)) or "the threshold"
        fig.suptitle(f"Number of singular values of ΔW above {threshold}, per layer\n"
                     f"task {task}, model {model_name(model)}"
                     f" ({', '.join(sorted({rec.experiment or '?' for rec in runs}))}); mean ± std over seeds (dots: each seed where "
                     f"n ≤ {SEED_POINTS_MAX_N}); black bars: the layer's ceiling min(d, k)", fontsize=10)
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=min(4, max(1, len(labels))), fontsize=8)
        out.append((f"singular_values__{task}_{model}", fig))
    return out


def _module_order(module: str) -> tuple[int, str]:
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    return (order.index(module), "") if module in order else (len(order), module)


def ablation_figures(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    """Bar chart of the compression/decompression ablation per (task, model, r) with runs of ≥ 2 MoRA types:
    mean of the task's primary metric with ± std error bars, each seed's value where n ≤ 3, the chance level of
    UUID accuracy; types not run are labelled "not run"."""
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
        color = _color("mora", r)
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
            ax.bar(x, mean, yerr=std if len(values) > 1 else None, capsize=4, color=color, alpha=0.8)
            if len(values) <= SEED_POINTS_MAX_N:
                draw_seed_points(ax, [x] * len(values), values, "black")
            ax.annotate(f"n={len(values)}\nlr {format_point(lr)}", (x, max([mean + std, *values])),
                        textcoords="offset points", xytext=(0, 4), ha="center", fontsize=7)
        if metric == "char_acc":
            draw_chance_line(ax, scale)
            ax.legend(fontsize=8, loc="upper left")
        ax.set_xticks(range(len(types)), [mora_type_name(t) for t in types], rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("compression / decompression type")
        ax.set_ylabel(("final " if task == UUID_TASK else "") + spec.label)
        ax.grid(False, axis="x")
        ax.set_title(f"MoRA compression/decompression ablation\ntask {task}, model {model_name(model)}, r = {r}; "
                     f"mean ± std over seeds (dots: each seed where n ≤ {SEED_POINTS_MAX_N})", fontsize=10)
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

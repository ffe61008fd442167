"""The paper's figures as the paper draws them, from whatever records match (docs/PAPER.md "## Figures 2–5"):

- Figure 2: UUID memorization, training loss of FFT and of LoRA at every rank (the paper: r = 8 … 256);
- Figure 3: UUID memorization, training loss of LoRA and MoRA at a low and a high rank (the paper: 8 and 256);
- Figure 4: pretraining loss of LoRA, MoRA, ReLoRA and ReMoRA, one panel per model (the paper: 250M and 1.3B);
- Figure 5: the number of singular values of ΔW above the threshold (0.1), averaged over all layers, one bar group per
  matrix type (ΔWq, ΔWk, ΔWv, ΔWo, ΔWup, ΔWdown, ΔWgate), one bar per method (the paper: the 250M model).

Each figure takes the paper's model when records of it exist and otherwise the models that do have records (today the
CPU reproduction's), and says so in its title; ``figure_sources`` lists the records each figure used
(results/figures/SOURCES.md).
"""
from __future__ import annotations

import statistics
from typing import Sequence

from matplotlib.figure import Figure

from .figure_style import SEED_POINTS_MAX_N, draw_seed_points
from .figures import _best_runs, _color, _plot_method_curves, analysis_layers, longest_experiment, new_figure
from .grouping import group_methods
from .naming import adapter_name, model_name, model_sort_key
from .records import RunRecord
from .tables import PRETRAIN_TASK, UUID_TASK, is_paper_default_type

PAPER_MODELS = {"fig2": ("llama2_7b",), "fig3": ("llama2_7b",), "fig4": ("llama_250m", "llama_1b"),
                "fig5": ("llama_250m",)}
PRETRAIN_METHODS = ("lora", "mora", "relora", "remora")
# Figure 5's bar groups, in the paper's order.
MATRIX_TYPES = (("q_proj", "ΔWq"), ("k_proj", "ΔWk"), ("v_proj", "ΔWv"), ("o_proj", "ΔWo"), ("up_proj", "ΔWup"),
                ("down_proj", "ΔWdown"), ("gate_proj", "ΔWgate"))


def _prefer_paper_models(runs: list[RunRecord], figure: str) -> tuple[list[str], bool]:
    """(the models to draw, whether they are the paper's)."""
    paper = [m for m in PAPER_MODELS[figure] if any(run.model == m for run in runs)]
    if paper:
        return paper, True
    return sorted({run.model for run in runs}, key=model_sort_key), False


def _which(models: Sequence[str], paper: bool, figure: str) -> str:
    names = ", ".join(model_name(m) for m in models)
    if paper:
        return f"model {names}"
    return f"model {names} (no record of the paper's {', '.join(model_name(m) for m in PAPER_MODELS[figure])})"


def _chosen(runs: Sequence[RunRecord], task: str) -> dict:
    """``{method key: {grid point: runs}}`` reduced to each method's best grid point."""
    return {key: {point: chosen} for key, by_point in group_methods(runs).items()
            for point, chosen in [_best_runs(by_point, task)]}


def _fig2_runs(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[str], bool]:
    runs = [rec for rec in records if rec.task == UUID_TASK and rec.adapter in ("fft", "lora")]
    models, paper = _prefer_paper_models(runs, "fig2")
    return [rec for rec in runs if rec.model in models], models, paper


def _fig3_runs(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[str], bool]:
    runs = [rec for rec in records if rec.task == UUID_TASK and rec.adapter in ("lora", "mora")
            and is_paper_default_type(rec)]
    models, paper = _prefer_paper_models(runs, "fig3")
    runs = [rec for rec in runs if rec.model in models]
    both = sorted({rec.r for rec in runs if rec.adapter == "lora"} & {rec.r for rec in runs if rec.adapter == "mora"})
    ranks = {both[0], both[-1]} if both else set()
    return [rec for rec in runs if rec.r in ranks], models, paper


def _fig4_runs(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[str], bool]:
    runs = [rec for rec in records if rec.task == PRETRAIN_TASK and rec.adapter in PRETRAIN_METHODS]
    models, paper = _prefer_paper_models(runs, "fig4")
    return [rec for model in models for rec in longest_experiment([r for r in runs if r.model == model])], \
        models, paper


def _fig5_runs(records: Sequence[RunRecord]) -> tuple[list[RunRecord], list[str], bool]:
    runs = [rec for rec in records if rec.task == PRETRAIN_TASK and rec.adapter in PRETRAIN_METHODS
            and analysis_layers(rec)[1]]
    models, paper = _prefer_paper_models(runs, "fig5")
    return longest_experiment([rec for rec in runs if rec.model == (models[0] if models else None)]), models[:1], paper


def _loss_figure(runs: list[RunRecord], title: str) -> Figure | None:
    fig = new_figure()
    ax = fig.add_subplot()
    if not _plot_method_curves(ax, _chosen(runs, UUID_TASK), "train_loss", UUID_TASK):
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (cross-entropy, nats/token)")
    ax.set_title(f"{title}\n(dots: each seed's last value where n ≤ {SEED_POINTS_MAX_N})", fontsize=9)
    ax.legend(fontsize=7, loc="upper right")
    return fig


def figure2(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    runs, models, paper = _fig2_runs(records)
    fig = _loss_figure(runs, "Figure 2: UUID memorization, FFT and LoRA at each rank\n"
                             f"{_which(models, paper, 'fig2')}; best lr of each; mean ± std over seeds") if runs else None
    return [("paper_fig2_uuid_loss_fft_lora", fig)] if fig else []


def figure3(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    runs, models, paper = _fig3_runs(records)
    ranks = " and ".join(str(r) for r in sorted({rec.r for rec in runs}))
    fig = _loss_figure(runs, f"Figure 3: UUID memorization, LoRA and MoRA at r = {ranks}\n"
                             f"{_which(models, paper, 'fig3')}; best lr of each; mean ± std over seeds") if runs else None
    return [("paper_fig3_uuid_loss_lora_mora", fig)] if fig else []


def figure4(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    runs, models, paper = _fig4_runs(records)
    if not runs:
        return []
    fig = new_figure(max(7.0, 5.2 * len(models)), 4.6)
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models):
        model_runs = [rec for rec in runs if rec.model == model]
        metric = "train_loss" if any(rec.curve("train_loss") for rec in model_runs) else "val_loss"
        _plot_method_curves(ax, _chosen(model_runs, PRETRAIN_TASK), metric, PRETRAIN_TASK)
        ax.set_title(model_name(model), fontsize=9)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(("training" if metric == "train_loss" else "validation") + " loss (nats/token)")
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Figure 4: pretraining from scratch, LoRA, MoRA, ReLoRA, ReMoRA\n{_which(models, paper, 'fig4')}\n"
                 f"best lr of each; mean ± std over seeds (dots: each seed's last value where n ≤ {SEED_POINTS_MAX_N})",
                 fontsize=9)
    return [("paper_fig4_pretrain_loss", fig)]


def _per_type_counts(run: RunRecord, thresholds: set[float]) -> dict[str, list[float]]:
    threshold, layers = analysis_layers(run)
    if threshold is not None:
        thresholds.add(threshold)
    per_type: dict[str, list[float]] = {}
    for layer in layers:
        per_type.setdefault(layer["module"], []).append(float(layer["count"]))
    return per_type


def figure5_values(runs: Sequence[RunRecord]) -> tuple[dict[str, dict[str, float]], set[float]]:
    """``{method: {matrix type: mean over layers and seeds of the count}}`` and the thresholds the records used."""
    values: dict[str, dict[str, float]] = {}
    thresholds: set[float] = set()
    for key, by_point in _chosen(runs, PRETRAIN_TASK).items():
        (chosen,) = by_point.values()
        per_type: dict[str, list[float]] = {}
        for run in chosen:
            for module, counts in _per_type_counts(run, thresholds).items():
                per_type.setdefault(module, []).extend(counts)
        values[key.adapter] = {module: statistics.fmean(counts) for module, counts in per_type.items()}
    return values, thresholds


def figure5_seed_values(runs: Sequence[RunRecord]) -> dict[str, list[dict[str, float]]]:
    """``{method: [{matrix type: mean over layers of the count}, one per seed]}``: the spread behind each bar."""
    out: dict[str, list[dict[str, float]]] = {}
    for key, by_point in _chosen(runs, PRETRAIN_TASK).items():
        (chosen,) = by_point.values()
        out[key.adapter] = [{module: statistics.fmean(counts) for module, counts in
                             _per_type_counts(run, set()).items()} for run in chosen]
    return out


def figure5(records: Sequence[RunRecord]) -> list[tuple[str, Figure]]:
    runs, models, paper = _fig5_runs(records)
    if not runs:
        return []
    values, thresholds = figure5_values(runs)
    seeds = figure5_seed_values(runs)
    colors = {key.adapter: _color(key.adapter, key.r) for key in _chosen(runs, PRETRAIN_TASK)}
    methods = [m for m in PRETRAIN_METHODS if m in values]
    fig = new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(methods))
    for i, method in enumerate(methods):
        xs = [x + (i - (len(methods) - 1) / 2) * width for x in range(len(MATRIX_TYPES))]
        ax.bar(xs, [values[method].get(module, 0.0) for module, _ in MATRIX_TYPES], width, color=colors[method],
               label=adapter_name(method))
        if len(seeds[method]) <= SEED_POINTS_MAX_N:
            points = [(x, seed[module]) for x, (module, _) in zip(xs, MATRIX_TYPES) for seed in seeds[method]
                      if module in seed]
            draw_seed_points(ax, [x for x, _ in points], [v for _, v in points], "black")
    ax.set_xticks(range(len(MATRIX_TYPES)), [label for _, label in MATRIX_TYPES])
    threshold = ", ".join(f"{t:g}" for t in sorted(thresholds)) or "the threshold"
    ax.set_ylabel(f"singular values of ΔW > {threshold}\n(mean over layers)")
    ax.grid(False, axis="x")
    ax.legend(fontsize=8)
    ax.set_title(f"Figure 5: number of singular values of ΔW above {threshold}, by matrix type\n"
                 f"{_which(models, paper, 'fig5')}; best lr of each\nmean over layers and seeds"
                 f" (dots: each seed's mean over layers where n ≤ {SEED_POINTS_MAX_N})", fontsize=9)
    return [("paper_fig5_singular_values", fig)]


PAPER_FIGURE_BUILDERS = (figure2, figure3, figure4, figure5)
PAPER_FIGURE_PATTERNS = ("paper_fig*.png", "paper_fig*.pdf")


def figure_sources(records: Sequence[RunRecord]) -> dict[str, list[str]]:
    """``{figure stem: [run_id of every record drawn]}`` (the best grid point's runs of each method)."""
    sources = {}
    for stem, (runs, _, _), task in (("paper_fig2_uuid_loss_fft_lora", _fig2_runs(records), UUID_TASK),
                                     ("paper_fig3_uuid_loss_lora_mora", _fig3_runs(records), UUID_TASK),
                                     ("paper_fig4_pretrain_loss", _fig4_runs(records), PRETRAIN_TASK),
                                     ("paper_fig5_singular_values", _fig5_runs(records), PRETRAIN_TASK)):
        used = []
        for model in sorted({rec.model for rec in runs}, key=model_sort_key):
            for by_point in _chosen([rec for rec in runs if rec.model == model], task).values():
                used += [run.run_id for chosen in by_point.values() for run in chosen]
        if used:
            sources[stem] = used
    return sources

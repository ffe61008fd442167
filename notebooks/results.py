# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # MoRA reproduction: results
#
# Everything below is computed from the result records under `results/runs/` (schema `mora-run/1`, one JSON file per
# run, written by `train.py`). The same code writes `results/tables/` (`python scripts/make_tables.py`) and
# `results/figures/` (`python scripts/make_figures.py`). Set the environment variable `MORA_RESULTS_DIR` to read
# another results folder.
#
# This notebook is a [jupytext](https://jupytext.readthedocs.io) pair: edit `results.py` or `results.ipynb` and run
# `jupytext --sync notebooks/results.ipynb`.

# %%
import os
import sys
from pathlib import Path

ROOT = next(p for p in [Path.cwd(), *Path.cwd().parents] if (p / "results_lib").is_dir())
sys.path.insert(0, str(ROOT))
RESULTS = Path(os.environ.get("MORA_RESULTS_DIR", ROOT / "results"))

import pandas as pd  # noqa: E402
from IPython.display import Image, Markdown, display  # noqa: E402

from results_lib import build_all_tables, load_records, load_reference, render_markdown  # noqa: E402
from results_lib.figures import build_all_figures, figure_bytes, new_figure  # noqa: E402
from results_lib.naming import adapter_name  # noqa: E402

skipped: list[str] = []
records = load_records(RESULTS, report=skipped.append)
print(f"{len(records)} completed records in {RESULTS}; {len(skipped)} files skipped")
for message in skipped:
    print("  " + message)

# %% [markdown]
# ## The runs
# One row per completed run: its setting, seed, trainable parameters and final metrics.

# %%
runs = pd.DataFrame([
    {"run_id": rec.run_id, "task": rec.task, "model": rec.model, "adapter": rec.adapter, "r": rec.r,
     "mora_type": rec.mora_type, "lr": rec.lr, "seed": rec.seed, "trainable": rec.trainable_params, **rec.final}
    for rec in records
])
if not runs.empty:
    runs = runs.sort_values(["task", "model", "adapter", "r", "mora_type", "lr", "seed"], na_position="first")
display(runs)

# %% [markdown]
# ## Tables
# Mean ± std over seeds (n); "—" where no run exists; the lr of each row is the best of its sweep (see the notes).

# %%
tables = build_all_tables(records, load_reference(RESULTS / "paper_reference.yaml"))
for table in tables.values():
    display(Markdown(render_markdown(table)))

# %% [markdown]
# ## Figures
# Rendered from the records here (identical to the files `scripts/make_figures.py` writes).

# %%
figures = build_all_figures(records)
for stem, fig in figures:
    display(Markdown(f"**{stem}**"))
    display(Image(data=figure_bytes(fig, "png")))
if not figures:
    print("no figure yet: no record has the curves or analysis a figure needs")

# %% [markdown]
# ## Exploration: final score against trainable parameters
# Each point is one setting at its best learning rate (mean over seeds): does a method buy its score with parameters?
# UUID runs are scored by final greedy character accuracy, pretraining runs by validation perplexity.

# %%
from results_lib.grouping import aggregate, choose_lr, final_metric, group_methods  # noqa: E402
from results_lib.metrics import metric_spec  # noqa: E402

SCORES = {"uuid": "char_acc", "pretrain": "val_ppl"}
points = []
for key, by_lr in group_methods(records).items():
    metric = SCORES.get(key.task)
    if metric is None:
        continue
    spec = metric_spec(metric)
    choice = choose_lr(by_lr, final_metric(metric), spec.higher_is_better)
    chosen = choice.reported(by_lr)  # the seeds that did not select the lr
    stat = aggregate(run.final.get(metric) for run in chosen)
    trainable = next((run.trainable_params for run in chosen if run.trainable_params), None)
    if stat is not None and trainable:
        points.append({"task": key.task, "model": key.model, "adapter": key.adapter, "r": key.r,
                       "mora_type": key.mora_type, "trainable": trainable, metric: stat.mean, "n": stat.n})
explore = pd.DataFrame(points)
display(explore)

for (task, model), group in (explore.groupby(["task", "model"]) if not explore.empty else []):
    metric = SCORES[task]
    spec = metric_spec(metric)
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    scale = 100.0 if spec.percent else 1.0
    for adapter, rows in group.groupby("adapter"):
        ax.scatter(rows["trainable"], rows[metric] * scale, label=adapter_name(adapter), s=40)
        for _, row in rows.iterrows():
            ax.annotate("" if pd.isna(row["r"]) else f"r={int(row['r'])}", (row["trainable"], row[metric] * scale),
                        textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel(spec.label)
    ax.set_title(f"{task}, model {model}: final score against trainable parameters", fontsize=10)
    ax.legend(fontsize=8)
    display(Image(data=figure_bytes(fig, "png")))

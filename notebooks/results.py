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
from results_lib.figures import build_all_figures, figure_bytes  # noqa: E402

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
# Each point is one method (adapter, rank, MoRA type) at its chosen learning rate, the mean over the seeds that did
# not choose it: does a method buy its score with parameters? UUID runs are scored by final greedy character
# accuracy, pretraining runs by validation perplexity. Each point has its own legend entry; the parameter axis is
# logarithmic only where the counts span a factor of 10 or more (`results_lib/exploration.py`).

# %%
from results_lib.exploration import exploration_figures, exploration_points  # noqa: E402

points = exploration_points(records)
display(pd.DataFrame(points))

for (task, model), fig in exploration_figures(points):
    display(Image(data=figure_bytes(fig, "png")))

"""notebooks/results.ipynb executes headless on the fixture records, and its jupytext pair is in sync; its
exploratory scatter plots (results_lib/exploration.py) label every point and choose the axis scale by the data."""
from __future__ import annotations

import jupytext
import nbformat
from nbclient import NotebookClient

from tests.results._paths import ROOT

NOTEBOOK = ROOT / "notebooks" / "results.ipynb"


def test_notebook_executes_on_fixture_records(fixture_results, monkeypatch):
    monkeypatch.setenv("MORA_RESULTS_DIR", str(fixture_results))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, kernel_name="python3", timeout=60,
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"]
    text = "".join(out.get("text", "") for out in outputs if out.output_type == "stream")
    assert "22 completed records" in text and "4 files skipped" in text
    markdown = "".join(out["data"].get("text/markdown", "") for out in outputs if out.output_type == "display_data")
    assert "UUID memorization" in markdown and "78.5 ± 0.7 (n=2)" in markdown
    images = [out for out in outputs if out.output_type == "display_data" and "image/png" in out["data"]]
    assert len(images) == 9 + 2  # the nine figures (four of them the paper's) and one exploratory plot per (task, model)


def test_jupytext_pair_in_sync():
    paired = jupytext.read(ROOT / "notebooks" / "results.py")
    stored = nbformat.read(NOTEBOOK, as_version=4)
    assert [(c.cell_type, c.source) for c in paired.cells] == [(c.cell_type, c.source) for c in stored.cells]
    assert all(not c.get("outputs") for c in stored.cells if c.cell_type == "code")  # committed without outputs


def test_exploration_labels_each_mora_type_and_fits_the_axis_to_the_range(fixture_records):
    from results_lib.exploration import exploration_figures, exploration_points, use_log_axis

    records, _ = fixture_records
    points = exploration_points(records)
    figures = dict(exploration_figures(points))
    assert sorted(figures) == [("pretrain", "tiny"), ("uuid", "tiny")]
    uuid = figures[("uuid", "tiny")].axes[0]
    labels = [c.get_label() for c in uuid.collections]
    assert len(labels) == len(set(labels)) == len([p for p in points if p["task"] == "uuid"])
    mora8 = sorted(label for label in labels if label.startswith("MoRA r=8 "))
    assert mora8 == ["MoRA r=8 (decouple) (n=1)", "MoRA r=8 (rope) (n=3)", "MoRA r=8 (sharing) (n=1)",
                     "MoRA r=8 (truncation) (n=1)"]  # one point and one legend entry per MoRA type
    assert len({tuple(c.get_paths()[0].vertices.round(6).flatten()) for c in uuid.collections
                if c.get_label().startswith("MoRA r=8 ")}) == 4  # and a marker per type
    # UUID: 16k to 900k trainable parameters, a log axis; pretraining: all 50,000, a linear one
    assert uuid.get_xscale() == "log"
    assert figures[("pretrain", "tiny")].axes[0].get_xscale() == "linear"
    assert use_log_axis([16_384, 900_000]) and not use_log_axis([169_400, 169_500, 223_900])

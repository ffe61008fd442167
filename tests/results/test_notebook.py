"""notebooks/results.ipynb executes headless on the fixture records, and its jupytext pair is in sync."""
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

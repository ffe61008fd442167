"""Result records → the paper's tables and figures (used by scripts/make_tables.py, scripts/make_figures.py and
notebooks/results.ipynb). Reads only ``results/runs/**/*.json`` records of schema ``mora-run/1``."""
from .grouping import LrChoice, MethodKey, Stat, aggregate, choose_lr, group_methods
from .records import RecordError, RunRecord, load_records, parse_record
from .reference import ReferenceFileError, add_reference_columns, load_reference, parse_reference
from .table_model import Table, render_latex, render_markdown
from .tables import build_all_tables

__all__ = [
    "LrChoice", "MethodKey", "RecordError", "ReferenceFileError", "RunRecord", "Stat", "Table", "add_reference_columns",
    "aggregate", "build_all_tables", "choose_lr", "group_methods", "load_records", "load_reference",
    "parse_record", "parse_reference", "render_latex", "render_markdown",
]

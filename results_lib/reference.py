"""The paper's reference values (``results/paper_reference.yaml``) and their merge into the tables.

Schema (``mora-paper-reference/1``)::

    schema: mora-paper-reference/1
    paper: "MoRA, arXiv 2405.12130"
    tables:                       # one list per table name of make_tables.py; an empty list is fine
      finetune:
        - match: {adapter: mora, r: 8}          # row identity: any of task, model, adapter, r, mora_type
          metric: gsm8k                          # a column id of that table (see TABLE_METRICS)
          value: 0.0                             # as printed in the paper (accuracies in %, perplexities as is)
          source: {table: "Table N", row: "the paper's row label"}
          note: "optional text added to the value's footnote"

Every value must come with its source (the paper's table and row); a value without one is rejected. A ``match``
without ``model`` puts the value next to that method's row for every model (e.g. the paper's LLaMA-2 number next to
the CPU-scale row), so the column is a reference, not a like-for-like comparison. A value whose setting has no row
(no run yet) gets a row of its own, in the section of its identity (made when missing), with "—" in our columns.
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from .table_model import Column, Table

SCHEMA = "mora-paper-reference/1"
MATCH_KEYS = ("task", "model", "adapter", "r", "mora_type")

# Column ids each table accepts in a reference entry (regular expressions, full match).
TABLE_METRICS: dict[str, tuple[str, ...]] = {
    "uuid": (r"char_acc", r"char_acc_tf", r"exact_match", r"char_acc@\d+"),
    "finetune": (r"mmlu_0shot", r"mmlu_5shot", r"gsm8k", r"math", r"biomed_avg", r"finance_avg"),
    "pretrain_ppl": (r"val_ppl",),
    "ppl_by_length": (r"ppl@\d+",),
    "ablation": (r"char_acc", r"char_acc_tf", r"exact_match", r"val_ppl", r"mmlu_0shot", r"mmlu_5shot", r"gsm8k",
                 r"math", r"biomed_avg", r"finance_avg"),
    "ablation_gsm8k": (r"gsm8k",),
    "biomed": (r"biomed/[a-z_]+", r"biomed_avg"),
    "finance": (r"finance/[a-z_]+", r"finance_avg"),
}


class ReferenceFileError(ValueError):
    """The reference file is unusable. Message: one line naming the file, entry and offending value."""


@dataclass(frozen=True)
class ReferenceValue:
    table: str
    match: Mapping[str, Any]
    metric: str
    value: float
    source_table: str
    source_row: str
    note: str | None = None

    def matches(self, identity: Mapping[str, Any]) -> bool:
        return all(identity.get(key) == value for key, value in self.match.items())

    @property
    def source(self) -> str:
        text = f"paper {self.source_table}, row \"{self.source_row}\""
        return f"{text}. {self.note}" if self.note else text


def parse_reference(data: Any, name: str = "paper_reference.yaml") -> dict[str, list[ReferenceValue]]:
    """Validate the parsed YAML; return ``{table name: [ReferenceValue, ...]}`` (every known table present)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ReferenceFileError(f"{name}: top level must be a mapping, got {type(data).__name__}")
    if data.get("schema", SCHEMA) != SCHEMA:
        raise ReferenceFileError(f"{name}: schema {data.get('schema')!r} is not {SCHEMA!r}")
    tables = data.get("tables") or {}
    if not isinstance(tables, dict):
        raise ReferenceFileError(f"{name}: 'tables' must be a mapping of table name to a list of entries")
    result: dict[str, list[ReferenceValue]] = {table: [] for table in TABLE_METRICS}
    for table, entries in tables.items():
        if table not in TABLE_METRICS:
            raise ReferenceFileError(f"{name}: unknown table {table!r} (known: {', '.join(TABLE_METRICS)})")
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise ReferenceFileError(f"{name}: tables.{table} must be a list, got {type(entries).__name__}")
        for i, entry in enumerate(entries):
            where = f"{name}: tables.{table}[{i}]"
            if not isinstance(entry, dict):
                raise ReferenceFileError(f"{where} must be a mapping")
            match = entry.get("match")
            if not isinstance(match, dict) or not match:
                raise ReferenceFileError(f"{where}: 'match' must be a non-empty mapping of {', '.join(MATCH_KEYS)}")
            unknown = sorted(set(match) - set(MATCH_KEYS))
            if unknown:
                raise ReferenceFileError(f"{where}: unknown match key {unknown[0]!r} (allowed: {', '.join(MATCH_KEYS)})")
            metric = entry.get("metric")
            if not isinstance(metric, str) or not any(re.fullmatch(p, metric) for p in TABLE_METRICS[table]):
                raise ReferenceFileError(f"{where}: metric {metric!r} is not a column of table {table!r}")
            value = entry.get("value")
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise ReferenceFileError(f"{where}: value {value!r} is not a finite number")
            source = entry.get("source")
            if (not isinstance(source, dict) or not isinstance(source.get("table"), str) or not source["table"].strip()
                    or not isinstance(source.get("row"), str) or not source["row"].strip()):
                raise ReferenceFileError(f"{where}: value {value!r} has no source (need source.table and source.row)")
            note = entry.get("note")
            if note is not None and (not isinstance(note, str) or not note.strip()):
                raise ReferenceFileError(f"{where}: note must be a non-empty string, got {note!r}")
            result[table].append(ReferenceValue(table, dict(match), metric, float(value), source["table"].strip(),
                                                source["row"].strip(), note.strip() if note else None))
    return result


def load_reference(path: Path | str) -> dict[str, list[ReferenceValue]]:
    """Read and validate a reference file; a missing file means no reference values."""
    path = Path(path)
    if not path.exists():
        return {table: [] for table in TABLE_METRICS}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ReferenceFileError(f"{path.name}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_reference(data, path.name)


def _format_value(value: float, metric: str) -> str:
    """As the paper prints it: perplexities with 2 decimals, accuracies / F1 (%) with 1."""
    return f"{value:.2f}" if "ppl" in metric else f"{value:.1f}"


def _add_rows_for_unmatched(table: Table, references: list[ReferenceValue]) -> None:
    """A row (and when needed a section) for every reference whose setting no row shows."""
    if table.new_row is None:
        return
    unmatched = [ref for ref in references
                 if not any(ref.matches(row.identity) for section in table.sections for row in section.rows)]
    for ref in unmatched:
        if any(ref.matches(row.identity) for section in table.sections for row in section.rows):
            continue  # a row made for an earlier reference of the same setting
        section = next((sec for sec in table.sections
                        if all(ref.match.get(key) == value for key, value in sec.identity.items())), None)
        if section is None:
            if table.new_section is None:
                continue
            same = [other for other in unmatched if all(other.match.get(k) == ref.match.get(k) for k in ref.match)]
            section = table.new_section(dict(ref.match), same)
            table.sections.append(section)
        section.rows.append(table.new_row(dict(ref.match)))


def add_reference_columns(table: Table, references: list[ReferenceValue]) -> Table:
    """A copy of ``table`` where each metric column that has a matching reference value is followed by a
    "<label> (paper)" column; every shown value carries a footnote mark [k] whose note gives its source (one note per
    source: the cells of one paper row share it)."""
    table = copy.deepcopy(table)
    _add_rows_for_unmatched(table, references)
    for section in table.sections:
        metric_ids = {column.id for column in section.columns}
        columns: list[Column] = []
        marks: dict[str, int] = {}
        placed: dict[tuple[int, str], str] = {}
        for column in section.columns:
            columns.append(column)
            relevant = [ref for ref in references if ref.metric == column.id and ref.metric in metric_ids]
            if not relevant:
                continue
            ref_id = f"{column.id}#paper"
            used = False
            for row_index, row in enumerate(section.rows):
                found = next((ref for ref in relevant if ref.matches(row.identity)), None)
                if found is None:
                    continue
                mark = marks.setdefault(found.source, len(marks) + 1)
                placed[(row_index, ref_id)] = f"{_format_value(found.value, found.metric)} [{mark}]"
                used = True
            if used:
                columns.append(Column(ref_id, f"{column.label} (paper)"))
        for (row_index, ref_id), text in placed.items():
            section.rows[row_index].cells[ref_id] = text
        section.columns = columns
        section.notes.extend(f"[{mark}] {source}" for source, mark in marks.items())
    return table

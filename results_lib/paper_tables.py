"""The paper's tables that break a Table 1 cell down (docs/PAPER.md): Table 4 (MoRA's compression / decompression
on GSM8K after MetaMath, at r = 8 and 256) and Tables 6–7 (the continual-pretraining suites per task).

Conventions as in tables.py: mean ± std over seeds (n), the best grid point shown with a note listing the others, "—"
where no run has the value; a paper value with no run gets its own row (reference.py).
"""
from __future__ import annotations

from typing import Sequence

from .grouping import MethodKey, aggregate, choose_lr, final_metric, format_point, group_methods
from .metrics import metric_spec
from .naming import model_name, model_sort_key
from .records import RunRecord
from .table_model import Column, Row, Section, Table
from .tables import _label_row, _method_label, identity, lr_note, trainable_cell

# Table 4's rows: (MoRA type, the paper's label with its equation).
ABLATION_VARIANTS = (("truncation", "Truncation (Eq. 4)"), ("sharing", "Sharing (Eq. 6)"),
                     ("decouple", "Decouple (Eq. 8)"), ("rope", "Rotation (Eq. 9)"))
# The paper's suites (Appendix C) in the order of Tables 6 and 7.
PAPER_SUITES = {
    "biomed": ("Table 6", "Biomedicine", ("pubmedqa", "usmle", "biommlu", "rct")),
    "finance": ("Table 7", "Finance", ("convfinqa", "fiqa_sa", "headline", "ner", "fpb")),
}


def build_gsm8k_ablation_table(records: Sequence[RunRecord]) -> Table:
    """Table 4: GSM8K of MoRA fine-tuned on MetaMath with each of the paper's four compression / decompression
    variants; one section per (model, r), one row per variant ("—" where not run)."""
    table = Table("ablation_gsm8k", "Compression / decompression on GSM8K (Table 4)",
                  "GSM8K accuracy (%) of MoRA fine-tuned on MetaMath with the paper's four compression / "
                  "decompression variants (truncation, sharing, decouple, rotation = RoPE), at each rank; "
                  "mean ± std over seeds (n).")
    runs = [rec for rec in records if rec.task == "math" and rec.adapter == "mora" and "gsm8k" in rec.final]
    labels = dict(ABLATION_VARIANTS)

    def section_for(ident: dict, references=()) -> Section:
        columns = [Column("mora_type", "Variant", False), Column("trainable", "trainable params"), Column("lr", "lr"),
                   Column("gsm8k", metric_spec("gsm8k").label)]
        model, r = ident.get("model", "?"), ident.get("r")
        return Section(f"model {model_name(model)}, r = {r}", columns, [],
                       identity={"task": "math", "model": model, "r": r})

    def row_for(ident: dict) -> Row:
        return Row(dict(ident), {"mora_type": labels.get(ident.get("mora_type"), str(ident.get("mora_type")))})

    table.new_section, table.new_row = section_for, row_for
    spec = metric_spec("gsm8k")
    for model, r in sorted({(rec.model, rec.r) for rec in runs}, key=lambda s: (model_sort_key(s[0]), s[1] or 0)):
        section = section_for({"model": model, "r": r})
        groups = {key.mora_type: by_point for key, by_point in
                  group_methods(rec for rec in runs if (rec.model, rec.r) == (model, r)).items()}
        for mora_type, label in ABLATION_VARIANTS:
            ident = {"task": "math", "model": model, "adapter": "mora", "r": r, "mora_type": mora_type}
            row = row_for(ident)
            if mora_type in groups:
                choice = choose_lr(groups[mora_type], final_metric("gsm8k"), True)
                chosen = choice.reported(groups[mora_type])
                row.cells.update(trainable=trainable_cell(chosen), lr=format_point(choice.lr),
                                 gsm8k=spec.format_stat(aggregate(run.final.get("gsm8k") for run in chosen)))
                note = lr_note(label, choice, spec, spec.label, groups[mora_type])
                if note:
                    section.notes.append(note)
            section.rows.append(row)
        table.sections.append(section)
    return table


def build_suite_table(records: Sequence[RunRecord], domain: str) -> Table:
    """Table 6 (biomed) / Table 7 (finance): each task of the paper's suite and the average, rows model × method,
    at the grid point with the best average."""
    source, title, tasks = PAPER_SUITES[domain]
    average = f"{domain}_avg"
    metrics = [f"{domain}/{task}" for task in tasks] + [average]
    table = Table(domain, f"{title} suite per task ({source})",
                  f"Continual pretraining on {title.lower()} text: each task of the paper's suite (Appendix C) and "
                  f"their average (Table 1's column), accuracy / F1 in %; the grid point with the best average; "
                  f"mean ± std over seeds (n).")
    runs = [rec for rec in records if average in rec.final]

    def section_for(ident=None, references=()) -> Section:
        columns = [Column("model", "Model", False), Column("method", "Method", False), Column("lr", "lr")]
        return Section(None, columns + [Column(m, metric_spec(m).label) for m in metrics], [])

    table.new_section, table.new_row = section_for, _label_row
    if not runs:
        return table
    section = section_for()
    for key, by_point in group_methods(runs).items():
        choice = choose_lr(by_point, final_metric(average), True)
        chosen = choice.reported(by_point)
        cells = {"model": model_name(key.model), "method": _method_label(key), "lr": format_point(choice.lr)}
        for metric in metrics:
            cells[metric] = metric_spec(metric).format_stat(aggregate(run.final.get(metric) for run in chosen))
        ident = identity(key)
        ident.pop("task")  # biomed and finance rows are told apart by the table, not by the task name
        section.rows.append(Row(ident, cells))
        note = lr_note(f"{model_name(key.model)} {_method_label(MethodKey(*key))}", choice, metric_spec(average),
                       metric_spec(average).label, by_point)
        if note:
            section.notes.append(note)
    table.sections.append(section)
    return table
